import { test } from "node:test";
import assert from "node:assert/strict";
import { darkTheme } from "../src/controls.js";

const systemDark = () => true;
const systemLight = () => false;

test("an explicit theme wins over JupyterLab's and the system's", () => {
  assert.equal(darkTheme("dark", "true", systemLight), true);
  assert.equal(darkTheme("light", "false", systemDark), false);
});

test("auto follows JupyterLab's theme when there is one, else the system's", () => {
  assert.equal(darkTheme("auto", "false", systemLight), true);
  assert.equal(darkTheme("auto", "true", systemDark), false);
  assert.equal(darkTheme("auto", undefined, systemDark), true);
  assert.equal(darkTheme("auto", undefined, systemLight), false);
});

test("the colour-scale menu's auto option names the scale it draws", async () => {
  const { scaleLabel } = await import("../src/controls.js");
  assert.equal(scaleLabel("auto", "log"), "auto: log");
  assert.equal(scaleLabel("auto", "linear"), "auto: linear");
  assert.equal(scaleLabel("row", "row"), "÷ row max");
});
