// BokehJS, once per page however many widgets: PROTOCOL.md ("BokehJS").

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
