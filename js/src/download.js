// Figure download: a PNG of a view (the heatmap panels, the all-heads grid, the step bars) at 1×
// or 2×, titled with the model, layer and head, colour scale, weighting and a prompt excerpt,
// composed on a canvas in the page (no server: works offline in snapshots). Bokeh plots are
// painted again through their own export at the chosen pixel ratio; the grid (DOM and one
// sprite image) is drawn from its elements' boxes.

import { h } from "./dom.js";
import { NORM_NAME } from "./legend.js";
import { MEAN } from "./store.js";

const EXCERPT = 90; // characters of the prompt in the title

/**
 * The image's title lines for `view` ("heatmap", "grid", "bars"): [model and what is shown;
 * colour scale and weighting; prompt excerpt]. `scale` is the trait, `drawn` the scale drawn,
 * `badge` the grid's badge metric (or "").
 */
export function figureTitle(facts, { view, layer, head, scale, drawn, weighting, step, badge }) {
  const model = facts.sources.map((s) => (facts.compare ? `${s.label}: ${s.model.name}` : s.model.name)).join(" vs ");
  const what = view === "grid" ? `all heads (${facts.layers.length} layers × ${facts.heads.length} heads)`
    : `layer ${layer}, ${head === MEAN ? "mean of heads" : `head ${head}`}`;
  const first = [model, what];
  if (view === "bars" && step >= 0) first.push(`step ${step}: output ${quote(facts.tokens[facts.generated[0] + step])}`);
  const colour = view === "bars" ? null
    : view === "grid" ? `thumbnails: √(weight ÷ head max)${badge ? ` · badges: ${badge.replace(/_/g, " ")}` : ""}`
      : `colour: ${drawn}${scale === "auto" ? " (auto)" : ""}`;
  const weights = weighting === "norm" ? NORM_NAME : "attention weights α";
  return [first.join(" · "), [colour, weights].filter(Boolean).join(" · "), `prompt: ${excerpt(facts)}`];
}

const quote = (t) => `“${String(t ?? "").replace(/\s+/g, " ").trim()}”`;

/** The prompt's first EXCERPT characters (the raw token texts joined), quoted, "…" when cut. */
export function excerpt(facts) {
  const src = facts.sources[0].tokens;
  const [p0, p1] = facts.prompt;
  const texts = (src.raw ?? src.text).slice(p0, p1);
  const text = texts.join(src.raw ? "" : " ").replace(/\s+/g, " ").trim();
  return `“${text.length > EXCERPT ? `${text.slice(0, EXCERPT - 1)}…` : text}”`;
}

/** A file name for the figure: attn_<model>_L<l>_H<h>_<view>.png (ASCII letters, digits, _ - .). */
export function figureName(facts, { view, layer, head }) {
  const model = facts.sources[0].model.name.replace(/[^A-Za-z0-9_.-]+/g, "-");
  const what = view === "grid" ? "all-heads" : `L${layer}_${head === MEAN ? "mean" : `H${head}`}`;
  return `attn_${model}_${what}_${view}.png`;
}

/**
 * Run `paint()` (synchronous) with `devicePixelRatio` reading `ratio`, so that Bokeh's export
 * paints its canvas at that many pixels per CSS pixel; the page's own value is restored at once.
 */
function atPixelRatio(ratio, paint) {
  const own = Object.getOwnPropertyDescriptor(globalThis, "devicePixelRatio");
  try {
    Object.defineProperty(globalThis, "devicePixelRatio", { configurable: true, get: () => ratio });
  } catch {
    return paint();
  }
  try {
    return paint();
  } finally {
    if (own) Object.defineProperty(globalThis, "devicePixelRatio", own);
    else delete globalThis.devicePixelRatio;
  }
}

/** A Bokeh plot view painted at `scale` pixels per CSS pixel: {canvas, width, height} (CSS px). */
export function plotCanvas(view, scale) {
  const layer = atPixelRatio(scale, () => view.export("png", true));
  return { canvas: layer.canvas, width: view.bbox.width, height: view.bbox.height };
}

/**
 * The grid drawn from its elements: backgrounds, borders, the sprite's tiles and the texts,
 * each at its box. Resolves to {canvas, width, height} (CSS px).
 */
export async function domCanvas(el, scale, bg) {
  const box = el.getBoundingClientRect();
  const canvas = h("canvas", { width: Math.ceil(box.width * scale), height: Math.ceil(box.height * scale) });
  const ctx = canvas.getContext("2d");
  ctx.scale(scale, scale);
  ctx.fillStyle = bg;
  ctx.fillRect(0, 0, box.width, box.height);
  const sprites = new Map();
  const sprite = async (url) => {
    if (!sprites.has(url)) {
      const img = new Image();
      img.src = url;
      sprites.set(url, img.decode().then(() => img, () => null));
    }
    return sprites.get(url);
  };
  ctx.imageSmoothingEnabled = false;
  for (const node of el.querySelectorAll("*")) {
    const r = node.getBoundingClientRect();
    const cs = getComputedStyle(node);
    if (cs.display === "none" || cs.visibility === "hidden" || !r.width) continue;
    const x = r.left - box.left;
    const y = r.top - box.top;
    if (cs.backgroundColor && !/rgba\(.*, 0\)$|transparent/.test(cs.backgroundColor)) {
      ctx.fillStyle = cs.backgroundColor;
      ctx.fillRect(x, y, r.width, r.height);
    }
    const url = /url\("?(.*?)"?\)/.exec(cs.backgroundImage)?.[1];
    if (url) {
      const img = await sprite(url);
      const [bx, by] = cs.backgroundPosition.split(" ").map((v) => -parseFloat(v));
      const [sw, sh] = cs.backgroundSize.split(" ").map(parseFloat);
      if (img && sw && sh) {
        const fx = img.naturalWidth / sw;
        const fy = img.naturalHeight / sh;
        ctx.drawImage(img, bx * fx, by * fy, r.width * fx, r.height * fy, x, y, r.width, r.height);
      }
    }
    const bw = parseFloat(cs.borderTopWidth);
    if (bw > 0 && !/rgba\(.*, 0\)$|transparent/.test(cs.borderTopColor)) {
      ctx.strokeStyle = cs.borderTopColor;
      ctx.lineWidth = bw;
      ctx.strokeRect(x + bw / 2, y + bw / 2, r.width - bw, r.height - bw);
    }
    const text = [...node.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
    if (text) {
      ctx.fillStyle = cs.color;
      ctx.font = `${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
      ctx.textBaseline = "middle";
      ctx.fillText(text, x + parseFloat(cs.paddingLeft || 0), y + r.height / 2);
    }
  }
  return { canvas, width: box.width, height: box.height };
}

/**
 * One image: the title lines over `parts` ({canvas, width, height} in CSS px) side by side, at
 * `scale` pixels per CSS pixel, in the theme's colours `{bg, fg, muted}`.
 */
export function composeFigure(lines, parts, scale, { bg, fg, muted }) {
  const pad = 10;
  const lineH = 17;
  const font = (i) => `${i === 0 ? "600 " : ""}13px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif`;
  const measure = h("canvas").getContext("2d");
  const texts = lines.map((line, i) => ((measure.font = font(i)), measure.measureText(line).width));
  const width = Math.max(parts.reduce((w, p) => w + p.width, 0) + pad * (parts.length + 1),
    Math.min(Math.max(...texts) + 2 * pad, 900));
  const top = pad + lineH * lines.length + 6;
  const height = top + Math.max(...parts.map((p) => p.height)) + pad;
  const canvas = h("canvas", { width: Math.round(width * scale), height: Math.round(height * scale) });
  const ctx = canvas.getContext("2d");
  ctx.scale(scale, scale);
  ctx.fillStyle = bg;
  ctx.fillRect(0, 0, width, height);
  ctx.textBaseline = "top";
  lines.forEach((line, i) => {
    ctx.fillStyle = i === 0 ? fg : muted;
    ctx.font = font(i);
    ctx.fillText(fit(ctx, line, width - 2 * pad), pad, pad + i * lineH);
  });
  let x = pad;
  for (const p of parts) {
    ctx.drawImage(p.canvas, x, top, p.width, p.height);
    x += p.width + pad;
  }
  return canvas;
}

/** `text` cut with "…" to fit `max` px in ctx's font. */
function fit(ctx, text, max) {
  if (ctx.measureText(text).width <= max) return text;
  let n = text.length;
  while (n > 1 && ctx.measureText(`${text.slice(0, n)}…`).width > max) n--;
  return `${text.slice(0, n)}…`;
}

/** Offer `canvas` as a PNG file named `name` (a blob: URL; no network). */
export function savePNG(canvas, name) {
  return new Promise((resolve) => canvas.toBlob((blob) => {
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    resolve(blob);
  }, "image/png"));
}

/** The row of download buttons under a view: "Save PNG 1× 2×"; onSave(scale). */
export function saveRow(view, onSave) {
  const button = (scale) => h("button", { type: "button", class: `aw-save-${scale}x`, text: `${scale}×`,
    title: `Download the ${view} as a PNG at ${scale}× (titled with the model, layer/head, scale, weights and prompt)`,
    onclick: () => onSave(scale) });
  return h("div", { class: `aw-save aw-save-${view}` }, h("span", { class: "aw-note", text: "Save PNG" }), button(1), button(2));
}
