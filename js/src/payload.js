// Decoding of the payload layout of PROTOCOL.md ("Payload"). Pure: no DOM, no Bokeh.

const MAGIC = "AWP1";

// float16 bit pattern -> float32 value, for all 65536 patterns: one lookup per cell.
export const F16 = (() => {
  const table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exp = (bits >> 10) & 0x1f;
    const frac = bits & 0x3ff;
    if (exp === 0) table[bits] = sign * frac * 2 ** -24;
    else if (exp === 31) table[bits] = frac ? NaN : sign * Infinity;
    else table[bits] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return table;
})();

/** Bytes of a trait or message buffer (DataView, ArrayBuffer or typed array) as a Uint8Array. */
export function asBytes(value) {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(`expected bytes (DataView, ArrayBuffer or typed array); got ${typeof value}`);
}

const ARRAYS = { float16: Uint16Array, float32: Float32Array, uint8: Uint8Array };

/** The JSON header of a payload, without copying its sections. */
export function decodeHeader(value) {
  const bytes = asBytes(value);
  if (bytes.byteLength < 8) throw new Error(`payload is ${bytes.byteLength} bytes, too short`);
  const magic = String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]);
  if (magic !== MAGIC) throw new Error(`payload must start with ${MAGIC}; got ${JSON.stringify(magic)}`);
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(4, true);
  return JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
}

/**
 * Decode one payload: `{header, sections}` where sections maps `${source}:${key}` to
 * `{key, source, dtype, layout, shape, data}`. float16 data stays as its Uint16Array bit
 * patterns (decode with F16). Arrays are copied, so an unaligned input is fine.
 */
export function decodePayload(value) {
  const bytes = asBytes(value);
  const header = decodeHeader(bytes);
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(4, true);
  const dataStart = Math.ceil((8 + n) / 8) * 8;
  const sections = new Map();
  for (const s of header.sections) {
    const Arr = ARRAYS[s.dtype];
    if (!Arr) throw new Error(`section ${s.key}: unknown dtype ${s.dtype}`);
    const start = dataStart + s.offset;
    if (start + s.nbytes > bytes.byteLength) {
      throw new Error(`payload is truncated: section ${s.key} ends at byte ${start + s.nbytes} of ${bytes.byteLength}`);
    }
    const copy = bytes.slice(start, start + s.nbytes); // fresh, aligned buffer
    sections.set(sectionId(s.source, s.key), { ...s, data: new Arr(copy.buffer) });
  }
  return { header, sections };
}

export const sectionId = (source, key) => `${source}:${key}`;

/** Number of query rows and key columns of a matrix section. */
export function matrixShape(section) {
  return section.layout === "tril" ? [section.shape[0], section.shape[0]] : [section.shape[0], section.shape[1]];
}

/** Value at query q, key k (NaN above the diagonal of a causal section). */
export function valueAt(section, q, k) {
  if (section.layout === "tril") {
    if (k > q) return NaN;
    return decodeValue(section, (q * (q + 1)) / 2 + k);
  }
  return decodeValue(section, q * section.shape[1] + k);
}

function decodeValue(section, i) {
  return section.dtype === "float16" ? F16[section.data[i]] : section.data[i];
}

/** Float32Array of query row q over all keys (NaN where the key is not attended: k > q). */
export function row(section, q) {
  const [, nk] = matrixShape(section);
  const out = new Float32Array(nk).fill(NaN);
  const n = section.layout === "tril" ? q + 1 : nk;
  const start = section.layout === "tril" ? (q * (q + 1)) / 2 : q * nk;
  for (let k = 0; k < n; k++) out[k] = decodeValue(section, start + k);
  return out;
}

/** Float32Array of key column k over all queries (NaN where query q < k in a causal section). */
export function column(section, k) {
  const [nq, nk] = matrixShape(section);
  const out = new Float32Array(nq).fill(NaN);
  for (let q = section.layout === "tril" ? k : 0; q < nq; q++) {
    out[q] = decodeValue(section, section.layout === "tril" ? (q * (q + 1)) / 2 + k : q * nk + k);
  }
  return out;
}
