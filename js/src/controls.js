// The controls around the plots: title, layer and head sliders, mean-of-heads toggle, colour
// scale and attention-block menus, the caveat banner, the notice line, the prompt box of a live
// kernel; and which theme applies.

import { AUTO_LOG_TOKENS } from "./colour.js";
import { h, keyboardSlider } from "./dom.js";
import { MEAN } from "./store.js";

const CAVEAT =
  "Attention is a debugging signal, not an explanation: it shows where the model looked, not why.";
const MEAN_CAVEAT = "Averaging over heads hides per-head behaviour: check single heads before concluding.";
// Shown instead of CAVEAT while the view is value-weighted.
// One line at the widths CAVEAT fits (they share the box, whose height must not change).
export const NORM_CAVEAT =
  "Value-weighted: each weight × the norm of its token's value (Kobayashi et al. 2020, “Attention is Not Only a Weight”).";
const WEIGHTING_NAMES = { attention: "attention", norm: "value-weighted" };
const NO_NORMS =
  "Value-weighted attention needs the norms of the values, which these traces do not hold: capture with " +
  "aw.capture(..., values='norms') (or a snapshot left them out to fit its budget).";
const BLOCK_NAMES = {
  encoder: "encoder self-attention",
  decoder: "decoder self-attention",
  cross: "cross-attention (decoder → encoder)",
  self: "self-attention",
};
// Short labels (the controls fit one row in JupyterLab at 1280 px with the file browser open);
// each option's title says it in full.
const SCALE_NAMES = { auto: "auto", linear: "linear", log: "log", row: "÷ row max" };
const SCALE_TITLES = {
  auto: `auto (the default): log from ${AUTO_LOG_TOKENS} tokens on, where a long prompt's weights spread thin and a linear scale shows one faint diagonal; linear below`,
  linear: "linear: 0…1 (value-weighted: 0…the view's max)",
  log: "log: 1e-4…1 (value-weighted: max·1e-4…max)",
  row: "row-relative: each query row divided by its own max",
};
const NOTICE_MS = 8000;

export class Controls {
  /**
   * state: the view's shared state (reads `trace`). get(name), set(name, value): traits.
   * run(prompt): ask the kernel to capture again. onBlock(): a block was chosen (the kernel
   * replaces the payload).
   */
  constructor({ state, get, set, run, onBlock }) {
    Object.assign(this, { state, get, set, run, onBlock });
  }

  /** The parts above and below the plots: {title, bar, caveat, notice, prompt (or null)}. */
  build(title) {
    const { layers, heads } = this.state.trace;
    const slider = (cls, n, label) =>
      keyboardSlider(h("input", { type: "range", min: 0, max: n - 1, step: 1, class: cls, "aria-label": label }));
    this.layerInput = slider("aw-layer", layers.length, "layer");
    this.layerOut = h("output", { class: "aw-value" });
    this.headInput = slider("aw-head", heads.length, "head");
    this.headOut = h("output", { class: "aw-value" });
    this.meanBox = h("input", { type: "checkbox", class: "aw-mean" });
    this.scaleSelect = h("select", { class: "aw-scale", "aria-label": "colour scale" });
    for (const [value, label] of Object.entries(SCALE_NAMES)) this.scaleSelect.append(h("option", { value, text: label, title: SCALE_TITLES[value] }));
    this.layerInput.addEventListener("input", () => this.set("layer", layers[+this.layerInput.value]));
    this.headInput.addEventListener("input", () => this.set("head", heads[+this.headInput.value]));
    this.meanBox.addEventListener("change", () => this.set("head", this.meanBox.checked ? MEAN : heads[+this.headInput.value]));
    this.scaleSelect.addEventListener("change", () => this.set("scale", this.scaleSelect.value));
    this.weightSelect = weightingMenu(this.get("_weightings") ?? ["attention"]);
    this.weightSelect.addEventListener("change", () => this.set("weighting", this.weightSelect.value));
    this.noticeBox = h("div", { class: "aw-notice", role: "alert" });
    return {
      title: h("div", { class: "aw-title", text: title }),
      bar: h("div", { class: "aw-controls" },
        h("label", {}, h("span", { text: "Layer" }), this.layerInput, this.layerOut),
        h("label", {}, h("span", { text: "Head" }), this.headInput, this.headOut),
        h("label", { title: "mean of the layer's captured heads" }, this.meanBox, h("span", { text: "mean" })),
        h("label", {}, h("span", { text: "Colour" }), this.scaleSelect),
        h("label", { title: this.weightSelect.title }, h("span", { text: "Weights" }), this.weightSelect),
        this.blockMenu()),
      // The value-weighted sentence only where it can be chosen (it may make the box taller).
      caveat: h("div", { class: "aw-caveat" }, h("span", { text: CAVEAT }),
        this.weightSelect.disabled ? null : h("span", { class: "aw-norm-caveat", text: NORM_CAVEAT }),
        h("strong", { class: "aw-mean-caveat", text: ` ${MEAN_CAVEAT}` })),
      notice: this.noticeBox,
      prompt: this.promptArea(),
    };
  }

  /** Encoder-decoder traces: which attention (the kernel re-encodes the payload on a change). */
  blockMenu() {
    const blocks = this.get("_blocks") ?? [];
    if (blocks.length <= 1) return null;
    const menu = h("select", { class: "aw-block", "aria-label": "attention block" });
    for (const b of blocks) menu.append(h("option", { value: b, text: BLOCK_NAMES[b] ?? b }));
    menu.value = this.get("block");
    menu.addEventListener("change", () => {
      this.onBlock();
      this.set("block", menu.value);
    });
    return h("label", {}, h("span", { text: "Attention" }), menu);
  }

  /** A live kernel's prompt box: Run (or Ctrl/Shift+Enter) captures again. */
  promptArea() {
    this.promptBox = null;
    if (!this.get("_live")) return null;
    this.promptBox = h("textarea", { class: "aw-prompt-text", rows: 2, "aria-label": "prompt" });
    this.promptBox.value = this.get("prompt");
    this.runButton = h("button", { type: "button", class: "aw-run", text: "Run" });
    this.runStatus = h("span", { class: "aw-run-status", role: "status" });
    this.runButton.addEventListener("click", () => this.runPrompt());
    this.promptBox.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey || e.shiftKey)) {
        e.preventDefault();
        e.stopPropagation(); // not JupyterLab's run-cell shortcut
        this.runPrompt();
      }
    });
    // One line under the controls (its corner handle makes it taller).
    this.promptBox.rows = 1;
    this.promptBox.title = "Prompt: re-runs the model in the kernel (Shift+Enter or Run)";
    return h("div", { class: "aw-prompt" },
      h("div", { class: "aw-row" }, h("span", { class: "aw-note", text: "Prompt" }), this.promptBox, this.runButton, this.runStatus));
  }

  /**
   * The sliders, outputs, toggle and menus showing `layer`, `head`, `scale` and `weighting`;
   * `drawn`: the scale `auto` stands for (whichever is chosen), which its option names ("auto: log").
   */
  show(layer, head, scale, weighting = "attention", drawn = "linear") {
    const { layers, heads } = this.state.trace;
    this.layerInput.value = Math.max(0, layers.indexOf(layer));
    this.layerOut.textContent = `${layer}`;
    if (head !== MEAN) this.headInput.value = Math.max(0, heads.indexOf(head));
    this.headOut.textContent = head === MEAN ? "mean" : `${head}`;
    this.meanBox.checked = head === MEAN;
    this.headInput.disabled = head === MEAN;
    this.scaleSelect.value = scale;
    const auto = this.scaleSelect.querySelector('option[value="auto"]');
    if (auto) auto.textContent = scaleLabel("auto", drawn);
    this.scaleSelect.title = scale === "auto" ? `colour scale: auto, now ${drawn} (${SCALE_TITLES.auto})` : `colour scale: ${SCALE_TITLES[scale] ?? scale}`;
    this.weightSelect.value = weighting;
  }

  showPrompt(text) {
    if (this.promptBox) this.promptBox.value = text;
  }

  runPrompt() {
    if (!this.promptBox || this.running) return;
    this.running = true;
    this.runButton.disabled = true;
    this.runStatus.textContent = "running…";
    this.run(this.promptBox.value);
  }

  /** Progress of this view's `run`: running, done, or error (the old trace stays). */
  runState(msg) {
    if (!this.runStatus) return;
    if (msg.state === "running") {
      this.runStatus.textContent = "running…";
      return;
    }
    this.running = false;
    this.runButton.disabled = false;
    this.runStatus.textContent = msg.state === "done" ? "done" : `error: ${msg.message}`;
    this.runStatus.classList.toggle("aw-error", msg.state !== "done");
  }

  /** Show a message in the notice line for a few seconds. */
  notice(message) {
    if (!this.noticeBox) return;
    this.noticeBox.textContent = String(message);
    this.noticeBox.classList.add("aw-visible");
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => this.noticeBox.classList.remove("aw-visible"), NOTICE_MS);
  }

  dispose() {
    clearTimeout(this.noticeTimer);
  }
}

/** The colour-scale menu's label of `scale`: the `auto` option names the scale it draws ("auto: log"). */
export function scaleLabel(scale, drawn) {
  return scale === "auto" ? `auto: ${SCALE_NAMES[drawn] ?? drawn}` : SCALE_NAMES[scale] ?? scale;
}

/**
 * The "Weights" menu: attention | value-weighted; `weightings` are those the traces can show
 * (the `_weightings` trait). Without "norm" the value-weighted choice is disabled, and the
 * menu's title says why and how to capture what it needs.
 */
export function weightingMenu(weightings) {
  const menu = h("select", { class: "aw-weighting", "aria-label": "weights" });
  const choice = weightingChoice(weightings);
  for (const o of choice.options) {
    const option = h("option", { value: o.value, text: o.label });
    option.disabled = o.disabled;
    menu.append(option);
  }
  menu.disabled = choice.disabled;
  menu.title = choice.title;
  return menu;
}

/** What the "Weights" menu offers for `weightings`: {options: [{value, label, disabled}], disabled, title}. */
export function weightingChoice(weightings) {
  const norm = weightings.includes("norm");
  return {
    options: Object.entries(WEIGHTING_NAMES).map(([value, label]) => ({ value, label, disabled: !weightings.includes(value) })),
    disabled: !norm,
    title: norm ? `attention: the weights α (0…1). ${NORM_CAVEAT} Still a debugging signal, not an explanation.` : NO_NORMS,
  };
}

/** Whether the dark theme applies: the `theme` trait, or for "auto" JupyterLab's, or the system's. */
export function isDark(choice) {
  const lab = globalThis.document?.body?.dataset?.jpThemeLight;
  return darkTheme(choice, lab, () => !!globalThis.matchMedia?.("(prefers-color-scheme: dark)").matches);
}

/** darkTheme("auto", "false" | "true" | undefined (not JupyterLab), systemDark()) and so on. */
export function darkTheme(choice, labLight, systemDark) {
  return choice === "dark" || (choice === "auto" && (labLight !== undefined ? labLight === "false" : systemDark()));
}

/**
 * Call onChange() when the theme "auto" follows may have changed: JupyterLab's (attributes of
 * the body) or the system's. Returns the function that stops watching.
 */
export function watchTheme(onChange) {
  const lab = new MutationObserver(onChange);
  lab.observe(document.body, { attributes: true, attributeFilter: ["data-jp-theme-light", "class"] });
  const system = globalThis.matchMedia?.("(prefers-color-scheme: dark)");
  system?.addEventListener?.("change", onChange);
  return () => {
    lab.disconnect();
    system?.removeEventListener?.("change", onChange);
  };
}
