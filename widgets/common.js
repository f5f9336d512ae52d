// Helpers shared by phi3lab's widgets. Each widget module imports what it needs from here;
// phi3lab.views.widgets inlines this file into the module it hands to anywidget (no bundler, no network).

// Create an element: h("span", {class: "x", title: "t", onclick: fn}, child, "text", ...)
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "style" && typeof value === "object") Object.assign(node.style, value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child);
  }
  return node;
}

// base64 -> Uint8Array (heat quantised to 0..255)
export function bytes(b64) {
  const raw = atob(b64 || "");
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

// base64 of little-endian uint32 -> array of numbers (positions)
export function uint32s(b64) {
  const raw = bytes(b64);
  const view = new DataView(raw.buffer);
  const out = new Array(raw.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = view.getUint32(4 * i, true);
  return out;
}

function rgbOf(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

// The colour of a fraction 0..1 on the palette Python sends (linear between its stops).
export function heatRGB(palette, fraction) {
  const f = Math.min(Math.max(fraction, 0), 1) * (palette.length - 1);
  const i = Math.min(Math.floor(f), palette.length - 2);
  const a = rgbOf(palette[i]);
  const b = rgbOf(palette[i + 1]);
  return a.map((c, k) => Math.round(c * (1 - (f - i)) + b[k] * (f - i)));
}

export function css(rgb) {
  return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
}

// Dark text on light backgrounds, white on dark ones (the rule of phi3lab.views.widgets._base.text_colour).
export function textOn(rgb) {
  const [r, g, b] = rgb.map((c) => c / 255);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.4 ? "#111827" : "#ffffff";
}

// Paint a chip with a heat value 0..255 (0: no heat, the theme's own chip colour).
export function paintChip(node, palette, value) {
  if (value > 0) {
    const rgb = heatRGB(palette, value / 255);
    node.style.background = css(rgb);
    node.style.color = textOn(rgb);
  } else {
    node.style.background = "";
    node.style.color = "";
  }
  node.dataset.heat = String(value);
}

export function colourBar(palette, vmax, label) {
  const stops = palette.join(", ");
  return h("div", { class: "phi3lab-colourbar" },
    h("span", {}, "0"),
    h("span", { class: "phi3lab-ramp", style: { background: `linear-gradient(90deg, ${stops})` } }),
    h("span", {}, format(vmax)),
    h("span", { class: "phi3lab-muted" }, label));
}

export function format(x) {
  if (x === 0) return "0";
  if (Math.abs(x) >= 0.01) return x.toFixed(3);
  return x.toExponential(1);
}

export function tokenText(label) {
  return label.replace(/<0x0A>/g, "⏎");
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// In an exported page (phi3lab's embed.js) there is no kernel: controls that need Python are off.
export function isStatic(model) {
  return model.get("__static") === true;
}

export function staticNote() {
  return h("div", { class: "phi3lab-note" },
    "Saved view: the values shown when the notebook ran. Open the notebook with a kernel to explore.");
}

// Fill the widget's element, leaving out the children that are null (e.g. no static note).
export function mount(el, ...children) {
  el.replaceChildren(...children.filter((child) => child !== null && child !== undefined));
}

// A line that shows the widget's `error` trait whenever Python sets it.
export function errorLine(model) {
  const line = h("div", { class: "phi3lab-error", role: "alert" });
  const show = () => {
    line.textContent = model.get("error") || "";
    line.hidden = !model.get("error");
  };
  model.on("change:error", show);
  show();
  return line;
}

// A row of toggle buttons; `current()` says which is on, `choose(value)` is called on click.
export function toggles(values, current, choose, disabled = false) {
  const bar = h("span", { class: "phi3lab-toggles" });
  const buttons = values.map((value) =>
    h("button", { type: "button", class: "phi3lab-button", "data-value": value, disabled, onclick: () => choose(value) },
      value));
  bar.append(...buttons);
  const refresh = () => {
    for (const b of buttons) b.classList.toggle("phi3lab-on", b.dataset.value === String(current()));
  };
  refresh();
  return { bar, refresh, buttons };
}
