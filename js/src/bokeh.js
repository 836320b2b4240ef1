// BokehJS, once per page however many widgets: PROTOCOL.md ("BokehJS"); and the few things the
// parts do to the Bokeh documents they embed (embed a skeleton, set properties, theme).

const PENDING = "__attn_widget_bokeh__";

/**
 * Resolve to `window.Bokeh[version]`. When it is missing, `request()` must resolve to the
 * bokeh.min.js source (bytes or text); the first widget on the page asks, every other one
 * shares its promise, and the source is injected as one classic script.
 */
export function loadBokeh(version, request) {
  const existing = globalThis.Bokeh && globalThis.Bokeh[version];
  if (existing) return Promise.resolve(existing);
  const pending = (globalThis[PENDING] ??= {});
  if (!pending[version]) {
    pending[version] = request().then((source) => {
      if (!(globalThis.Bokeh && globalThis.Bokeh[version])) {
        injectScript(source);
        globalThis.performance?.mark?.("aw:bokeh-eval");
      }
      const bokeh = globalThis.Bokeh && globalThis.Bokeh[version];
      if (!bokeh) throw new Error(`BokehJS ${version} did not register itself`);
      return bokeh;
    });
    pending[version].catch(() => delete pending[version]); // a later widget may retry
  }
  return pending[version];
}

/** Run a classic script from its source, inline (a blob: URL measured slower: 0.46 s vs 0.33 s). */
function injectScript(source) {
  const script = document.createElement("script");
  script.textContent = typeof source === "string" ? source : new TextDecoder().decode(source);
  document.head.appendChild(script);
}

/**
 * Embed a skeleton from `bokeh.embed.json_item` into `host` (a copy: the trait's value stays as
 * it is). Returns {views, root}: every view made, and the one of the model named `name`.
 */
export async function embedFigure(bokeh, item, host, name) {
  const views = [...(await bokeh.embed.embed_item(structuredClone(item), host))];
  return { views, root: views.find((v) => v.model.name === name) ?? views[0] };
}

/** Set only the Bokeh properties that change, in one update: each write costs a re-layout. */
export function setChanged(model, props) {
  const changed = Object.fromEntries(Object.entries(props).filter(([k, v]) => model[k] !== v));
  if (Object.keys(changed).length) model.setv(changed);
}

const THEME = {
  light: { bg: "#ffffff", fg: "#1f2328", muted: "#59636e", line: "#d1d9e0" },
  dark: { bg: "#1b1d21", fg: "#e6e8eb", muted: "#a3abb5", line: "#3b4048" },
};

/** Colour a Bokeh document's plots, axes and colour bars for the light or the dark theme. */
export function themeDocument(doc, dark) {
  const c = THEME[dark ? "dark" : "light"];
  for (const m of doc.all_models) {
    const t = m.type;
    // The border line in the background colour: without it the canvas's first row and column
    // (half-covered by each paint's border fill) kept the light theme's first paint, a light
    // 1-px line along the top and left of every plot in the dark theme.
    if (t === "Plot" || t === "Figure") m.setv({ background_fill_color: c.bg, border_fill_color: c.bg, border_line_color: c.bg, outline_line_color: c.line });
    else if (t === "LinearAxis") m.setv({ axis_label_text_color: c.fg, major_label_text_color: c.fg, axis_line_color: c.muted, major_tick_line_color: c.muted, minor_tick_line_color: null });
    else if (t === "ColorBar") m.setv({ background_fill_color: c.bg, major_label_text_color: c.fg, title_text_color: c.fg, major_tick_line_color: c.bg });
  }
}
