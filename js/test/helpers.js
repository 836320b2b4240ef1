// Test helpers: build payloads the way PROTOCOL.md lays them out, float16 encoding.

/** float16 bit pattern of a number (round to nearest, normal and subnormal range). */
export function f16bits(x) {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  let a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | Math.round(a / 2 ** -24);
  let e = Math.floor(Math.log2(a));
  let m = Math.round((a / 2 ** e - 1) * 1024);
  if (m === 1024) { m = 0; e += 1; }
  return sign | ((e + 15) << 10) | m;
}

export function f16array(values) {
  return Uint16Array.from(values, f16bits);
}

/** Payload bytes: "AWP1", u32 header length, JSON header, sections 8-byte aligned. */
export function encodePayload(header, sections, { misalign = 0 } = {}) {
  let offset = 0;
  const table = sections.map((s) => {
    const bytes = new Uint8Array(s.data.buffer, s.data.byteOffset, s.data.byteLength);
    const entry = { key: s.key, source: s.source ?? 0, dtype: s.dtype, layout: s.layout, shape: s.shape, offset, nbytes: bytes.length };
    offset += Math.ceil(bytes.length / 8) * 8;
    return [entry, bytes];
  });
  const json = new TextEncoder().encode(JSON.stringify({ ...header, sections: table.map((t) => t[0]) }));
  const start = Math.ceil((8 + json.length) / 8) * 8;
  const out = new Uint8Array(misalign + start + offset);
  const body = out.subarray(misalign);
  body.set([65, 87, 80, 49]);
  new DataView(body.buffer, body.byteOffset).setUint32(4, json.length, true);
  body.set(json, 8);
  for (const [entry, bytes] of table) body.set(bytes, start + entry.offset);
  return misalign ? new DataView(out.buffer, misalign) : body;
}

/** Packed lower triangle (row i at i*(i+1)/2) of a dense row-major T×T matrix. */
export function packTril(dense, t) {
  const out = [];
  for (let i = 0; i < t; i++) for (let k = 0; k <= i; k++) out.push(dense[i * t + k]);
  return out;
}
