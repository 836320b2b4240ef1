// A snapshot page's binary blobs, as attn_widget/snapshot/page.py writes them: deflated bytes,
// written as windows-1252 text with four byte values escaped ("raw") or as base64, and for
// float16 data split into byte planes (every value's first byte, then every second byte).

/** The byte values a raw blob writes as "=" + digit: NUL, CR and "<" (which the HTML parser
 * would alter, or read as the end of the element) and the escape byte "=" itself. */
export const ESCAPED = [0x00, 0x0d, 0x3c, 0x3d];

/**
 * A decoder of raw blobs. The page is read as windows-1252, so every byte arrives as one
 * character: bytes below 0x80 and from 0xA0 up as the same code point, bytes 0x80..0x9F as the
 * code points `cp1252` lists (the page's manifest carries the table).
 * @param {number[]} cp1252 code points of bytes 0x80..0x9F
 * @returns {(text: string) => Uint8Array}
 */
export function rawDecoder(cp1252) {
  const byteOf = new Uint8Array(0x10000);
  for (let i = 0; i < 256; i++) byteOf[i] = i;
  cp1252.forEach((cp, i) => { byteOf[cp] = 0x80 + i; });
  return (text) => {
    const out = new Uint8Array(text.length);
    let n = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      out[n++] = c === 0x3d ? ESCAPED[text.charCodeAt(++i) - 0x30] : byteOf[c];
    }
    return out.subarray(0, n);
  };
}

/** The bytes of a base64 blob (a portable, pure-ASCII page). */
export function fromBase64(text) {
  return Uint8Array.fromBase64 ? Uint8Array.fromBase64(text)
    : Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** The bytes of a zlib stream (what Python's zlib.compress writes). */
export async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Items of `itemsize` bytes put back together from their byte planes. */
export function unshuffle(planes, itemsize) {
  if (itemsize === 1) return planes;
  const n = planes.length / itemsize;
  const out = new Uint8Array(planes.length);
  for (let j = 0; j < itemsize; j++) {
    const plane = planes.subarray(j * n, (j + 1) * n);
    for (let i = 0; i < n; i++) out[i * itemsize + j] = plane[i];
  }
  return out;
}

/** The pieces one after another, in a new array. */
export function concat(pieces) {
  const out = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of pieces) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A DataView over the bytes, as the widget's binary traits and message buffers arrive. */
export function asView(bytes) {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
