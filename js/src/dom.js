// DOM helpers the parts share: element building, keyboard handling of sliders, performance marks.

/** An element: `class`, `text` (textContent, never HTML), `on<event>` listeners, other attributes. */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

/**
 * Arrow keys, Home/End and PageUp/PageDown on a range input, done by the widget: hosts such as
 * JupyterLab cancel the browser's own handling of keys pressed inside notebook outputs. Notebook 7
 * goes further: its shortcuts, matched on the window before the input sees the key, stop the
 * event; the attribute tells Lumino to match none on this element.
 */
export function keyboardSlider(input) {
  input.setAttribute("data-lm-suppress-shortcuts", "true");
  input.addEventListener("keydown", (e) => {
    const next = sliderKey(e.key, +input.value, +input.min, +input.max);
    if (next === undefined || e.altKey || e.ctrlKey || e.metaKey) return;
    e.preventDefault();
    e.stopPropagation();
    if (next === +input.value) return;
    input.value = next;
    input.dispatchEvent(new Event("input", { bubbles: true }));
  });
  return input;
}

/** The value a key moves a slider to (clamped to min…max), or undefined for other keys. */
export function sliderKey(key, value, min, max) {
  const page = Math.max(1, Math.round((max - min) / 10));
  const next = { ArrowRight: value + 1, ArrowUp: value + 1, ArrowLeft: value - 1, ArrowDown: value - 1,
    PageUp: value + page, PageDown: value - page, Home: min, End: max }[key];
  return next === undefined ? undefined : Math.min(max, Math.max(min, next));
}

/** A performance mark (for benchmarks: benchmarks/bench_widget.py --first-paint). */
export function markTime(name) {
  globalThis.performance?.mark?.(name);
}
