// Helpers shared by phi3lab's widgets. Each widget module imports what it needs from here;
// phi3lab.views.widgets inlines this file into the module it hands to anywidget (no bundler, no network).
//
// Colours follow phi3lab.colours: Python sends a scale {kind, stops, vmax, floor, label, signal,
// veil, veil_alpha, no_signal} with the values, one byte each: 0 = no signal; shares 1..255 (255 = the
// top); scores 1..255 around 128 (zero), 1 = -top, 255 = +top.

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

// base64 -> Uint8Array (values on a scale, one byte each)
export function bytes(b64) {
  const raw = atob(b64 || "");
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

// base64 of little-endian unsigned integers (2 or 4 bytes) -> array of numbers (positions, indices)
export function uints(b64, size = 4) {
  const raw = bytes(b64);
  const view = new DataView(raw.buffer);
  const out = new Array(raw.length / size);
  for (let i = 0; i < out.length; i++) out[i] = size === 2 ? view.getUint16(2 * i, true) : view.getUint32(4 * i, true);
  return out;
}

export function uint32s(b64) {
  return uints(b64, 4);
}

export function rgbOf(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function ramp(stops, fraction) {
  const f = Math.min(Math.max(fraction, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(f), stops.length - 2);
  const a = rgbOf(stops[i]);
  const b = rgbOf(stops[i + 1]);
  return a.map((c, k) => Math.round(c * (1 - (f - i)) + b[k] * (f - i)));
}

// A byte's place on its scale: 0..1 for shares, -1..1 for scores; null for no signal.
export function fractionOf(scale, byte) {
  if (!byte || !scale || scale.signal === false) return null;
  return scale.kind === "score" ? (byte - 128) / 127 : byte / 255;
}

// A byte's colour on its scale, [r, g, b] or null (no signal).
export function colourOf(scale, byte) {
  const f = fractionOf(scale, byte);
  if (f === null) return null;
  return ramp(scale.stops, scale.kind === "score" ? (f + 1) / 2 : f);
}

// A byte's value (about: one byte per value) in the scale's unit.
export function valueOf(scale, byte) {
  const f = fractionOf(scale, byte);
  return f === null ? null : f * scale.vmax;
}

export function css(rgb, alpha = 1) {
  return alpha === 1 ? `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})` : `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${alpha})`;
}

// Dark text on light backgrounds, white on dark ones (the rule of phi3lab.colours.text_on).
export function textOn(rgb) {
  const [r, g, b] = rgb.map((c) => c / 255);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.4 ? "#111827" : "#ffffff";
}

// Paint a chip with a byte on a scale. No signal is left uncoloured (the theme's chip colour); a signed
// score under the noise floor also gets a dashed outline (class phi3lab-nosignal), since it may look real.
export function paintChip(node, scale, byte, title) {
  const rgb = colourOf(scale, byte);
  node.classList.toggle("phi3lab-nosignal", rgb === null && scale.kind === "score");
  node.style.background = rgb ? css(rgb) : "";
  node.style.color = rgb ? textOn(rgb) : "";
  node.dataset.heat = String(byte || 0);
  if (title !== undefined) node.title = title;
}

export function format(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x === 0) return "0";
  const a = Math.abs(x);
  const text = a >= 1e-3 && a < 1e4 ? String(Number(x.toPrecision(3))) : x.toExponential(2);
  return text.replace("-", "−");
}

// The scale drawn with its numbers (ends and middle), its label, and the no-signal swatch.
export function legend(scale, note) {
  const swatch = [
    h("span", { class: `phi3lab-swatch-none phi3lab-swatch-${scale.kind}`, title: `under ${scale.floor.toExponential(1)}: no signal` }),
    h("span", { class: "phi3lab-muted" }, `no signal (|v| < ${scale.floor.toExponential(1)})`),
  ];
  if (!scale.signal) {
    return h("div", { class: "phi3lab-legend", dataset: { kind: scale.kind, signal: "false" } }, swatch,
      h("span", {}, `${scale.label}: every value is under the noise floor (largest ${scale.vmax.toExponential(1)})`));
  }
  const top = scale.vmax;
  const ticks = scale.kind === "score" ? [-top, 0, top] : [0, top / 2, top];
  const veiled = note === "veil" && scale.kind === "share";
  const bar = veiled
    ? `linear-gradient(90deg, ${css(rgbOf(scale.veil), scale.veil_alpha)}, rgba(255, 255, 255, 0))`
    : `linear-gradient(90deg, ${scale.stops.join(", ")})`;
  const how = note !== "veil" ? "" : veiled ? " (on the picture: clear = most, veiled = little)"
    : " (on the picture: a rim gives the sign; clear = strongest, veiled = little or none)";
  return h("div", { class: "phi3lab-legend", dataset: { kind: scale.kind, signal: "true" } },
    h("span", { class: "phi3lab-ramp-box" },
      h("span", { class: "phi3lab-ramp", style: { background: bar } }),
      h("span", { class: "phi3lab-ticks" },
        ticks.map((t) => h("span", {}, (scale.kind === "score" && t > 0 ? "+" : "") + format(t))))),
    h("span", {}, scale.label + how),
    swatch);
}

// Veil over a picture already drawn on ctx: one image of nc × nr cells (no seams), each cell as opaque
// as phi3lab.colours.veil_alpha says for its fraction (null: no signal, fully veiled).
export function drawVeil(ctx, scale, fractions, nc, nr, x, y, w, hgt) {
  const cells = document.createElement("canvas");
  cells.width = nc;
  cells.height = nr;
  const image = cells.getContext("2d").createImageData(nc, nr);
  const [r, g, b] = rgbOf(scale.veil);
  for (let k = 0; k < nc * nr; k++) {
    const f = fractions[k];
    const alpha = f === null ? scale.veil_alpha : scale.veil_alpha * (1 - Math.min(Math.abs(f), 1));
    image.data.set([r, g, b, Math.round(alpha * 255)], 4 * k);
  }
  cells.getContext("2d").putImageData(image, 0, 0);
  ctx.save();
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(cells, x, y, w, hgt);
  ctx.restore();
}

// The rim colour of a signed value: its sign's strongest colour on the diverging map (the veil already
// says how strong it is).
export function signOf(byte) {
  return !byte || byte === 128 ? 0 : byte > 128 ? 1 : -1;
}

export function rimColour(scale, byte) {
  const f = fractionOf(scale, byte);
  if (f === null || f === 0) return null;
  return rgbOf(scale.stops[f > 0 ? scale.stops.length - 2 : 1]);
}

// A rim inside a box in the colour of a signed value's sign, fainter for weaker values.
export function drawRim(ctx, rgb, fraction, x, y, w, hgt, sides = [true, true, true, true]) {
  const width = Math.min(Math.max(Math.min(w, hgt) / 10, 1.5), 3);
  ctx.save();
  ctx.strokeStyle = css(rgb, Math.max(0.35, Math.sqrt(Math.abs(fraction))));
  ctx.lineWidth = width;
  const [top, right, bottom, left] = sides;
  const a = width / 2;
  ctx.beginPath();
  if (top) { ctx.moveTo(x, y + a); ctx.lineTo(x + w, y + a); }
  if (right) { ctx.moveTo(x + w - a, y); ctx.lineTo(x + w - a, y + hgt); }
  if (bottom) { ctx.moveTo(x, y + hgt - a); ctx.lineTo(x + w, y + hgt - a); }
  if (left) { ctx.moveTo(x + a, y); ctx.lineTo(x + a, y + hgt); }
  ctx.stroke();
  ctx.restore();
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

// In an exported page (phi3lab's embed.js) there is no kernel: the saved `offline` payload answers
// what it can, and the controls that need Python are off.
export function isStatic(model) {
  return model.get("__static") === true;
}

export function offlineNote(text) {
  return h("div", { class: "phi3lab-note" }, text);
}

// Fill the widget's element, leaving out the children that are null (e.g. no offline note).
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

// A row of toggle buttons; `current()` says which is on, `choose(value)` is called on click;
// `enabled(value)` (optional) says which can be pressed, `label(value)` (optional) what a button says.
export function toggles(values, current, choose, enabled = () => true, label = (value) => value) {
  const bar = h("span", { class: "phi3lab-toggles" });
  const buttons = values.map((value) =>
    h("button", { type: "button", class: "phi3lab-button", "data-value": value, disabled: !enabled(value),
      onclick: () => choose(value) }, label(value)));
  bar.append(...buttons);
  const refresh = () => {
    for (const b of buttons) b.classList.toggle("phi3lab-on", b.dataset.value === String(current()));
  };
  refresh();
  return { bar, refresh, buttons, enable: () => buttons.forEach((b) => { b.disabled = !enabled(b.dataset.value); }) };
}
