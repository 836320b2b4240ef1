// The boot program of a snapshot page (built into attn_widget/static/snapshot.js and inlined
// by attn_widget/snapshot/page.py in a classic <script> after the blobs the first view needs).
// It reads the manifest, loads BokehJS and the widget's own ESM from the page's blobs, and
// renders the widget on a stand-in model that answers requests from recorded replies. A blob
// is decoded only when first asked for, so the parser can still be reading the later ones.

import { asView, concat, fromBase64, inflate, rawDecoder, unshuffle } from "./blobs.js";
import { StandInModel } from "./model.js";
import { answer } from "./replies.js";

const root = document.getElementById("aw-root");

function fail(err) {
  console.error(err);
  const p = document.createElement("p");
  p.className = "aw-snap-error";
  p.textContent = "This snapshot could not be shown: " + (err && err.message || err) +
    ". It needs a current browser (Chrome, Edge, Firefox or Safari from 2023 on).";
  root.replaceChildren(p);
}

/** `bytesOf(parts)`: the bytes of (blob, start, stop) ranges of the page's blobs. */
function blobReader(manifest) {
  const fromRaw = rawDecoder(manifest.cp1252);
  const decoded = new Map();
  const decode = async (i) => {
    if (!document.getElementById("aw-b" + i) && document.readyState === "loading") {
      await new Promise((done) => document.addEventListener("DOMContentLoaded", done, { once: true }));
    }
    const el = document.getElementById("aw-b" + i);
    const text = el.textContent;
    el.textContent = ""; // the decoded copy is all we keep
    const packed = el.dataset.enc === "b64" ? fromBase64(text) : fromRaw(text);
    const bytes = unshuffle(await inflate(packed), manifest.blobs[i].shuffle);
    if (bytes.length !== manifest.blobs[i].n) throw new Error("blob " + i + " is damaged");
    return bytes;
  };
  const blob = (i) => {
    if (!decoded.has(i)) decoded.set(i, decode(i));
    return decoded.get(i);
  };
  return async (parts) => concat(await Promise.all(parts.map(([b, s, e]) => blob(b).then((u) => u.subarray(s, e)))));
}

async function boot() {
  const manifest = JSON.parse(document.getElementById("aw-manifest").textContent);
  const bytesOf = blobReader(manifest);
  const text = async (parts) => new TextDecoder().decode(await bytesOf(parts));

  const state = { ...manifest.state };
  for (const [name, parts] of Object.entries(manifest.binary_state)) state[name] = asView(await bytesOf(parts));
  for (const parts of manifest.scripts) {
    const s = document.createElement("script");
    s.textContent = await text(parts);
    document.head.appendChild(s);
  }
  if (manifest.css) {
    const style = document.createElement("style");
    style.textContent = await text(manifest.css);
    document.head.appendChild(style);
  }
  const url = URL.createObjectURL(new Blob([await text(manifest.esm)], { type: "text/javascript" }));
  const mod = await import(url);
  URL.revokeObjectURL(url);
  let widget = mod.default ?? mod;
  if (typeof widget === "function") widget = await widget();
  const model = new StandInModel(state, (msg) => answer(manifest, msg, bytesOf), fail);
  await widget.initialize?.({ model });
  const el = document.createElement("div");
  root.replaceChildren(el);
  await widget.render({ model, el });
  if (window.parent !== window) { // shown in an iframe (static()): report the height to fit
    const post = () => window.parent.postMessage(
      { attnWidgetHeight: document.body.getBoundingClientRect().bottom + 16 }, "*");
    new ResizeObserver(post).observe(document.body);
  }
  window.attnWidgetSnapshot = { model, ready: true };
  document.documentElement.dataset.snapshotReady = "1";
}

boot().catch(fail);
