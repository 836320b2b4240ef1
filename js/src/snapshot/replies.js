// Answers to the front end's requests from the replies a snapshot recorded (the manifest's
// `replies`, keyed by `request_fields`). See the `Page` docstring in attn_widget/snapshot/page.py.

import { asView } from "./blobs.js";

/** The key a request's reply is recorded under: its request fields in order, as JSON. */
export function requestKey(msg, fields) {
  return JSON.stringify(fields.map((f) => msg[f] ?? null));
}

const pick = (msg, fields) => Object.fromEntries(fields.filter((f) => f in msg).map((f) => [f, msg[f]]));

/**
 * The reply to `msg`, as the kernel would send it: [content, buffers (DataViews)].
 * A recorded reply gets the request's `echo_fields` (its id). A request with no recorded
 * reply gets the template `unanswered[msg.type]` (or `unanswered["*"]`): its content, the
 * request's `copy` fields and its message with every `{field}` filled from the request.
 * @param manifest the page's manifest (replies, request_fields, echo_fields, unanswered)
 * @param msg the request
 * @param {(parts: number[][]) => Promise<Uint8Array>} bytesOf the bytes of a buffer's parts
 */
export async function answer(manifest, msg, bytesOf) {
  const recorded = manifest.replies[requestKey(msg, manifest.request_fields)];
  const echo = pick(msg, manifest.echo_fields);
  if (!recorded) {
    const template = manifest.unanswered[msg.type] ?? manifest.unanswered["*"];
    const message = template.message.replace(/\{(\w+)\}/g, (_, f) => String(msg[f] ?? ""));
    return [{ ...template.content, ...pick(msg, template.copy), ...echo, message }, []];
  }
  const buffers = await Promise.all(recorded.buffers.map((parts) => bytesOf(parts).then(asView)));
  return [{ ...recorded.content, ...echo }, buffers];
}
