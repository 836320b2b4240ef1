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

/** Number of query rows and key columns of a matrix section (its cells). */
export function matrixShape(section) {
  return section.layout === "tril" ? [section.shape[0], section.shape[0]] : [section.shape[0], section.shape[1]];
}

/**
 * Where a matrix section sits in its attention matrix: cell (i, j) covers query tokens
 * `q0 + i*side …` (side of them) and key tokens `k0 + j*side …`. Whole heads and means start at
 * 0 with side 1; `pool/` sections carry their `side`, `region/` sections their `rows` and `cols`
 * (PROTOCOL.md). {q0, k0, side, rows, cols}: rows and cols count cells.
 */
export function coverage(section) {
  const [rows, cols] = matrixShape(section);
  return { q0: section.rows?.[0] ?? 0, k0: section.cols?.[0] ?? 0, side: section.side ?? 1, rows, cols };
}

/** Whether a section holds query token q and key token k (a cell of it covers them). */
export function covers(section, q, k) {
  const c = coverage(section);
  return q >= c.q0 && k >= c.k0 && q < c.q0 + c.rows * c.side && k < c.k0 + c.cols * c.side;
}

/**
 * Value at query token q, key token k: the weight, or for a pooled section the max of the
 * square holding it. NaN where the key is not attended (above a causal diagonal, stored as -0 in
 * pooled and region sections) or the section does not cover (q, k).
 */
export function valueAt(section, q, k) {
  const c = coverage(section);
  const i = Math.floor((q - c.q0) / c.side);
  const j = Math.floor((k - c.k0) / c.side);
  if (i < 0 || j < 0 || i >= c.rows || j >= c.cols) return NaN;
  if (section.layout === "tril") return j > i ? NaN : decodeValue(section, (i * (i + 1)) / 2 + j);
  return decodeValue(section, i * c.cols + j);
}

function decodeValue(section, i) {
  if (section.dtype !== "float16") return section.data[i];
  const bits = section.data[i];
  return bits === 0x8000 ? NaN : F16[bits]; // -0: no attention here (PROTOCOL.md)
}

/**
 * Float32Array(n) of query token q over key tokens 0…n-1 (default: the keys the section reaches):
 * NaN where the key is not attended or not covered.
 */
export function row(section, q, n) {
  const c = coverage(section);
  const out = new Float32Array(n ?? c.k0 + c.cols * c.side).fill(NaN);
  const i = Math.floor((q - c.q0) / c.side);
  if (i < 0 || i >= c.rows) return out;
  const tril = section.layout === "tril";
  const start = tril ? (i * (i + 1)) / 2 : i * c.cols;
  const cells = tril ? i + 1 : c.cols;
  const end = Math.min(out.length, c.k0 + cells * c.side);
  for (let k = Math.max(0, c.k0); k < end; k++) out[k] = decodeValue(section, start + Math.floor((k - c.k0) / c.side));
  return out;
}

/** Float32Array(n) of key token k over query tokens 0…n-1 (default: the queries the section reaches), as row(). */
export function column(section, k, n) {
  const c = coverage(section);
  const out = new Float32Array(n ?? c.q0 + c.rows * c.side).fill(NaN);
  const j = Math.floor((k - c.k0) / c.side);
  if (j < 0 || j >= c.cols) return out;
  const tril = section.layout === "tril";
  const end = Math.min(out.length, c.q0 + c.rows * c.side);
  for (let q = Math.max(0, c.q0 + (tril ? j * c.side : 0)); q < end; q++) {
    const i = Math.floor((q - c.q0) / c.side);
    out[q] = decodeValue(section, tril ? (i * (i + 1)) / 2 + j : i * c.cols + j);
  }
  return out;
}
