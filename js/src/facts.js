// What every part reads of the traces a payload holds: their common layers and heads, the token
// axes, the prompt and generated spans. Pure: from the payload header only.

/**
 * The facts of a decoded payload header (PROTOCOL.md, "Payload"): `sources`, `compare`,
 * `layers`/`heads` (those every source captured), `tokens` (the queries'), `keyTokens` (the
 * keys': the encoder's for cross-attention, else the same), `cross`, `causal`, `prompt` and
 * `generated` ([start, end) positions), `poolSide` (> 0: a long trace whose heads come pooled
 * to squares of that many tokens a side), and the `header` itself.
 */
export function traceFacts(header) {
  const sources = header.sources;
  const src = sources[0];
  const tokens = src.tokens.text;
  const [p0, p1] = src.spans.prompt ?? src.spans.input ?? [0, tokens.length];
  return {
    header,
    sources,
    compare: header.mode === "compare",
    layers: src.layers.filter((l) => sources.every((s) => s.layers.includes(l))),
    heads: src.heads.filter((x) => sources.every((s) => s.heads.includes(x))),
    tokens,
    // Cross-attention: keys run over the other sequence (the encoder's tokens), so a token of
    // the strip (a query) has no column, and strip shading by attention does not apply.
    cross: !!src.key_tokens,
    causal: src.causal !== false,
    keyTokens: src.key_tokens?.text ?? tokens,
    poolSide: header.pool_side ?? 0,
    prompt: [p0, p1],
    generated: src.spans.generated ?? [p1, p1],
  };
}

/** The widget's title line: model, token counts, spans (or both traces in compare view). */
export function traceTitle(facts) {
  const { sources, tokens, keyTokens, prompt: [p0, p1], generated } = facts;
  if (facts.compare) return sources.map((s) => `${s.label}: ${s.model.name} · ${s.tokens.text.length} tokens`).join(" vs ");
  const name = sources[0].model.name;
  if (facts.cross) {
    return `${name} · cross-attention: ${tokens.length} decoder tokens (queries) → ${keyTokens.length} encoder tokens (keys)`;
  }
  return `${name} · ${tokens.length} tokens (prompt ${p1 - p0}, generated ${generated[1] - generated[0]})`;
}

/** Whether a position is a generated token (else a prompt token). */
export const isGenerated = (facts, pos) => pos >= facts.generated[0] && pos < facts.generated[1];
