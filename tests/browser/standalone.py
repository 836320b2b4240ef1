"""A test page that runs the widget's front end without Jupyter.

The page inlines BokehJS, the built ESM and a widget's trait values, and drives the front end
with a small stand-in model (``get``/``set``/``on``/``off``/``save_changes``/``send``). The
stand-in answers ``fetch`` requests from replies the widget itself computed ahead of time, so
the lazy-loading path runs as it does against a kernel. Test-only: offline snapshots are
``attn_widget.snapshot``'s job.
"""

from __future__ import annotations

import base64
import json

from attn_widget.figures import bokeh_source
from attn_widget.widget import AttentionWidget

_TRAITS = ("layer", "head", "scale", "selected_token", "step", "theme", "prompt", "block", "_blocks", "_live",
           "_figures")

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>attn_widget test page</title>
<script>{bokeh}</script></head>
<body style="margin:0;padding:8px;background:{background}">
<div id="widget"></div>
<script type="module">
const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const state = {state};
state._payload = b64({payload});
const replies = {replies};
const listeners = new Map();
const emit = (name, ...args) => (listeners.get(name) ?? []).slice().forEach((fn) => fn(...args));
window.sent = [];
window.model = {{
  get: (k) => state[k],
  set: (k, v) => {{ const old = state[k]; state[k] = v; if (old !== v) emit(`change:${{k}}`); }},
  save_changes: () => {{ window.saved = (window.saved ?? 0) + 1; }},
  on: (name, fn) => listeners.set(name, [...(listeners.get(name) ?? []), fn]),
  off: (name, fn) => listeners.set(name, (listeners.get(name) ?? []).filter((f) => f !== fn)),
  send: (msg) => {{
    window.sent.push(msg);
    setTimeout(() => {{
      const r = replies[`${{msg.source}}:${{msg.key}}`];
      const {{ id, trace_id, source, key }} = msg;
      if (msg.type !== "fetch") emit("msg:custom", {{ type: "error", id, message: "no kernel" }}, []);
      else if (r) emit("msg:custom", {{ type: "data", id, trace_id, source, key }}, [b64(r)]);
      else emit("msg:custom", {{ type: "error", id, trace_id, message: `cannot send ${{key}}` }}, []);
    }}, 5);
  }},
}};
window.emit = emit;
const mod = await import(URL.createObjectURL(new Blob([{esm}], {{ type: "text/javascript" }})));
window.cleanup = await mod.default.render({{ model: window.model, el: document.getElementById("widget") }});
window.rendered = true;
</script></body></html>
"""


def standalone_html(widget: AttentionWidget, *, fetchable: bool = True, background: str = "#ffffff") -> str:
    """HTML of a page showing ``widget``'s front end with a stand-in host.

    fetchable : precompute replies for every head, layer mean and the grid (small traces only).
    """
    state = {k: getattr(widget, k) for k in _TRAITS}
    replies = {}
    if fetchable:
        data = widget.view_data
        for source, trace in enumerate(data.views):  # the block shown, of each trace
            b = trace.block()
            keys = [f"mean/{layer}" for layer in b.layers] + ["grid"]
            keys += [f"head/{layer}/{h}" for layer in b.layers for h in b.heads]
            for key in keys:
                (reply, [buf]) = data.answer({"type": "fetch", "trace_id": data.trace_id, "source": source,
                                              "key": key})
                assert reply["type"] == "data", reply
                replies[f"{source}:{key}"] = base64.b64encode(buf).decode()
    return _PAGE.format(
        bokeh=bokeh_source().decode("utf-8").replace("</script", "<\\/script"),
        background=background,
        state=_script_json(state), payload=_script_json(base64.b64encode(widget._payload).decode()),
        replies=_script_json(replies), esm=_script_json(str(widget.get_state()["_esm"])))


def _script_json(value) -> str:
    return json.dumps(value).replace("</", "<\\/")
