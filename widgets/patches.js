// PatchExplorer: the picture in its HD canvas, crops view and global view, one scale for both.
// The picture keeps its colours: a neutral veil covers cells with little or no signal and lifts where
// the value is high; signed values (attribution) add a rim of their sign's colour. Attention sinks are
// outlined in grey (masked by default); the patch lens prints each cell's top token for one layer.
// State in: picture, geometry, crop_pos, global_pos, targets, layers, sources, heat_crops, heat_global,
// scale, info, sink_cells, sink_info, lens, offline, error. State out: target, source, layer, sinks, lens_layer.
import { h, mount, bytes, uints, uint32s, rgbOf, css, rimColour, signOf, fractionOf, valueOf, drawVeil, drawRim, legend, format, tokenText, isStatic, offlineNote, errorLine, toggles } from "./common.js";

const SIDE = 360; // display pixels of the canvas' longer side, per view
const LENS_CELL = 22; // display pixels a lens cell gets at least (the crops canvas grows, up to LENS_SIDE)
const LENS_SIDE = 960;
const SINKED = ["attention", "rollout"]; // the sources whose sinks are masked or shown

// The piece as printed on a cell: "▁" (a word start) left out, a newline as ⏎.
function cellText(piece) {
  const text = tokenText(piece).replace(/^▁/, "");
  return text === "" ? "␣" : text;
}

// A lens token's opacity: the rule of phi3lab.views.widgets.patches.lens_alpha.
function lensAlpha(lens, p) {
  return lens.faint + (1 - lens.faint) * Math.min(Math.max(p / lens.sure, 0), 1);
}

function decodeLens(lens) {
  if (!lens || !lens.held || !lens.held.length) return null;
  const index = lens.width === 2 ? uints(lens.index, 2) : bytes(lens.index);
  return { ...lens, index, probs: bytes(lens.probs) };
}

function render({ model, el }) {
  const frozen = isStatic(model);
  const geo = model.get("geometry");
  const offline = model.get("offline") || {};
  const [W, H] = geo.padded;
  const [left, top, right, bottom] = geo.pad_box;
  const [rows, cols] = geo.grid;
  const cells = geo.cells;
  const cropCells = rows * cols * cells * cells;
  const cropPos = uint32s(model.get("crop_pos"));
  const globalPos = uint32s(model.get("global_pos"));
  el.classList.add("phi3lab-w", "phi3lab-patches");

  let lens = decodeLens(model.get("lens"));
  const lensHeld = (layer) => lens !== null && lens.held.includes(layer);
  const savedPayload = (source, target, sinks) => (source === "attention" && sinks === "show"
    ? (offline.shown || {})[String(target)]
    : ((offline.payloads || {})[source] || {})[String(target)]);
  const send = (changes) => {
    if (frozen) {
      const next = { target: model.get("target"), source: model.get("source"), sinks: model.get("sinks"),
        lens_layer: model.get("lens_layer"), ...changes };
      if (next.source === "lens") {
        if (!lensHeld(next.lens_layer)) return;
        for (const [k, v] of Object.entries({ ...next, info: lens.info[String(next.lens_layer)] })) model.set(k, v);
        return;
      }
      const payload = savedPayload(next.source, next.target, next.sinks);
      if (!payload) return;
      for (const [k, v] of Object.entries({ ...next, ...payload })) model.set(k, v);
      return;
    }
    for (const [k, v] of Object.entries(changes)) model.set(k, v);
    model.save_changes();
  };

  const picture = new Image();
  let hovered = null; // canvas-pixel point under the mouse, shared by both views

  function makeView(kind, title) {
    const canvas = h("canvas", { width: 1, height: 1, class: `phi3lab-canvas-${kind}`, dataset: { view: kind } });
    canvas.addEventListener("mousemove", (event) => {
      const box = canvas.getBoundingClientRect();
      hovered = [(event.clientX - box.left) / box.width * W, (event.clientY - box.top) / box.height * H];
      drawAll();
    });
    canvas.addEventListener("mouseleave", () => { hovered = null; drawAll(); });
    return { kind, canvas, node: h("div", { class: "phi3lab-view" }, h("span", { class: "phi3lab-muted" }, title), canvas) };
  }
  const crops = makeView("crops", `HD crops (${rows} × ${cols}, ${cells} × ${cells} tokens each)`);
  const global = makeView("global", `global view (${cells} × ${cells} tokens)`);
  const bar = h("div", { class: "phi3lab-legend-slot" });

  // Display size of a view: SIDE on the longer side; the lens gives the crops view room for its text.
  function sizeOf(kind) {
    let side = SIDE;
    if (model.get("source") === "lens" && kind === "crops") {
      side = Math.min(LENS_SIDE, Math.max(SIDE, Math.max(rows, cols) * cells * LENS_CELL));
    }
    const s = side / Math.max(W, H);
    return [Math.round(W * s), Math.round(H * s), s];
  }

  function cellAt(kind, point) {
    if (!point) return null;
    const [x, y] = point;
    if (x < 0 || y < 0 || x >= W || y >= H) return null;
    if (kind === "crops") {
      const size = W / (cols * cells);
      const r = Math.floor(y / size);
      const c = Math.floor(x / size);
      return { r, c, index: r * cols * cells + c, box: [c * size, r * size, size, size] };
    }
    const gw = W / cells;
    const gh = H / cells;
    const r = Math.floor(y / gh);
    const c = Math.floor(x / gw);
    return { r, c, index: r * cells + c, box: [c * gw, r * gh, gw, gh] };
  }

  // Each cell's top token at the slider's layer, fainter where it is less probable.
  function drawLens(ctx, view, dw, dh, nr, nc) {
    const layer = model.get("lens_layer");
    const canvas = view.canvas;
    ctx.fillStyle = css(rgbOf(lens ? lens.veil : "#1f2937"), lens ? lens.veil_alpha : 0.55);
    ctx.fillRect(0, 0, dw, dh);
    canvas.dataset.lensLayer = String(layer);
    if (!lensHeld(layer)) { canvas.dataset.pieces = ""; return; }
    const k = lens.held.indexOf(layer);
    const offset = k * lens.cells + (view.kind === "crops" ? 0 : cropCells);
    const cw = dw / nc;
    const ch = dh / nr;
    const font = Math.max(7, Math.min(12, Math.floor(Math.min(ch * 0.45, cw * 0.4))));
    const printable = cw >= 12 && ch >= 9;
    ctx.save();
    ctx.font = `${font}px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.lineJoin = "round";
    const drawn = [];
    for (let r = 0; r < nr; r++) {
      for (let c = 0; c < nc; c++) {
        const j = offset + r * nc + c;
        const piece = lens.vocab[lens.index[j]];
        drawn.push(piece);
        if (!printable) continue;
        let text = cellText(piece);
        while (text.length > 1 && ctx.measureText(text).width > cw - 2) text = text.slice(0, -1);
        ctx.globalAlpha = lensAlpha(lens, lens.probs[j] / 255);
        const x = (c + 0.5) * cw;
        const y = (r + 0.5) * ch;
        ctx.strokeStyle = lens.veil;
        ctx.lineWidth = 3;
        ctx.strokeText(text, x, y);
        ctx.fillStyle = "#ffffff";
        ctx.fillText(text, x, y);
      }
    }
    ctx.restore();
    canvas.dataset.pieces = JSON.stringify(drawn);
    canvas.dataset.printed = String(printable);
  }

  // The sinks' cells outlined in the figures' neutral grey (dashed), on whole pixels.
  function drawSinks(ctx, view, dw, dh, nr, nc) {
    const sinks = model.get("sink_cells") || {};
    const list = (view.kind === "crops" ? sinks.crops : sinks.global) || [];
    const boxes = list.map((idx) => {
      const r = Math.floor(idx / nc);
      const c = idx % nc;
      const x0 = Math.round(c * dw / nc) + 1;
      const y0 = Math.round(r * dh / nr) + 1;
      return [x0, y0, Math.round((c + 1) * dw / nc) - 1 - x0, Math.round((r + 1) * dh / nr) - 1 - y0];
    });
    ctx.save();
    ctx.strokeStyle = "rgba(255, 255, 255, 0.4)"; // a faint light rim just inside, so the grey reads on a veiled cell
    ctx.lineWidth = 1;
    for (const [x, y, w, hh] of boxes) ctx.strokeRect(x + 1.5, y + 1.5, w - 3, hh - 3);
    ctx.strokeStyle = sinks.colour || "#6b7280";
    ctx.lineWidth = 2;
    ctx.setLineDash([6, 2]);
    for (const [x, y, w, hh] of boxes) ctx.strokeRect(x, y, w, hh);
    ctx.restore();
    view.canvas.dataset.sinks = JSON.stringify(boxes);
  }

  function draw(view) {
    const [dw, dh, s] = sizeOf(view.kind);
    const canvas = view.canvas;
    if (canvas.width !== dw || canvas.height !== dh) { canvas.width = dw; canvas.height = dh; }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, dw, dh);
    // white padding, hatched so it does not read as picture
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, dw, dh);
    ctx.strokeStyle = "rgba(0, 0, 0, 0.12)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let d = -dh; d < dw; d += 8) { ctx.moveTo(d, dh); ctx.lineTo(d + dh, 0); }
    ctx.stroke();
    if (picture.complete && picture.naturalWidth) {
      ctx.drawImage(picture, left * s, top * s, (right - left) * s, (bottom - top) * s);
    }
    const isCrops = view.kind === "crops";
    const source = model.get("source");
    const nr = isCrops ? rows * cells : cells;
    const nc = isCrops ? cols * cells : cells;
    if (source === "lens") {
      drawLens(ctx, view, dw, dh, nr, nc);
      canvas.dataset.sinks = "[]";
    } else {
      delete canvas.dataset.pieces;
      const scale = model.get("scale");
      const heat = bytes(model.get(isCrops ? "heat_crops" : "heat_global"));
      const fractions = Array.from(heat, (b) => fractionOf(scale, b));
      drawVeil(ctx, scale, fractions, nc, nr, 0, 0, dw, dh);
      if (scale.kind === "score") { // the sign of each region with signal, as a rim around each run of cells of one sign
        const cw = dw / nc;
        const ch = dh / nr;
        const differs = (k, r, c) => r < 0 || c < 0 || r >= nr || c >= nc || signOf(heat[r * nc + c]) !== signOf(heat[k]);
        for (let k = 0; k < heat.length; k++) {
          const rgb = rimColour(scale, heat[k]);
          if (!rgb) continue;
          const r = Math.floor(k / nc);
          const c = k % nc;
          drawRim(ctx, rgb, fractions[k], c * cw, r * ch, cw, ch,
            [differs(k, r - 1, c), differs(k, r, c + 1), differs(k, r + 1, c), differs(k, r, c - 1)]);
        }
      }
      if (SINKED.includes(source)) drawSinks(ctx, view, dw, dh, nr, nc);
      else canvas.dataset.sinks = "[]";
    }
    if (isCrops) { // crop boundaries
      ctx.strokeStyle = "rgba(37, 99, 235, 0.9)";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      for (let k = 1; k < cols; k++) { ctx.moveTo(k * dw / cols, 0); ctx.lineTo(k * dw / cols, dh); }
      for (let k = 1; k < rows; k++) { ctx.moveTo(0, k * dh / rows); ctx.lineTo(dw, k * dh / rows); }
      ctx.stroke();
    }
    const cell = cellAt(view.kind, hovered);
    if (cell) {
      ctx.strokeStyle = source === "lens" ? "#ffffff" : "#111827";
      ctx.lineWidth = 2;
      ctx.strokeRect(cell.box[0] * s, cell.box[1] * s, cell.box[2] * s, cell.box[3] * s);
    }
    canvas.dataset.target = String(model.get("target"));
    canvas.dataset.source = source;
  }

  const hoverLine = h("div", { class: "phi3lab-info", "aria-live": "polite" }, "Hover a cell to see its image token.");
  function describeHover() {
    const a = cellAt("crops", hovered);
    const b = cellAt("global", hovered);
    if (!a || !b) { hoverLine.textContent = "Hover a cell to see its image token."; return; }
    let say;
    if (model.get("source") === "lens") {
      const layer = model.get("lens_layer");
      say = (offset, index) => {
        if (!lensHeld(layer)) return "not read yet";
        const j = lens.held.indexOf(layer) * lens.cells + offset + index;
        return `reads ${JSON.stringify(lens.vocab[lens.index[j]])}, p≈${format(lens.probs[j] / 255)}`;
      };
    } else {
      const scale = model.get("scale");
      const heats = [bytes(model.get("heat_crops")), bytes(model.get("heat_global"))];
      say = (offset, index) => {
        const v = valueOf(scale, heats[offset ? 1 : 0][index]);
        return v === null ? "no signal" : `≈${format(v)}`;
      };
    }
    const crop = Math.floor(a.r / cells) * cols + Math.floor(a.c / cells) + 1;
    hoverLine.textContent = `crop ${crop}, cell (${a.r}, ${a.c}) → token #${cropPos[a.index]}: ${say(0, a.index)}`
      + ` · global view cell (${b.r}, ${b.c}) → token #${globalPos[b.index]}: ${say(cropCells, b.index)}`;
  }

  function drawAll() {
    draw(crops);
    draw(global);
    describeHover();
  }
  picture.onload = drawAll;
  picture.src = model.get("picture");

  // --- answer tokens, source, layer, sinks, lens layer ----------------------------------------------
  const layers = model.get("layers");
  const targets = model.get("targets").map(([label, row], i) =>
    h("span", { class: "phi3lab-chip phi3lab-selectable", title: `answer token ${i} (row ${row})`,
      dataset: { target: String(i) }, onclick: () => send({ target: i }) }, tokenText(label)));
  const sources = toggles(model.get("sources"), () => model.get("source"), (source) => {
    if (!frozen && source !== model.get("source")) {
      if (source === "rollout") info.textContent = "computing rollout (once, for every answer token)…";
      if (source === "lens" && !lens) info.textContent = "reading the patch lens (once, every layer)…";
    }
    send({ source });
  }, (source) => !frozen || (source === "lens" ? lens !== null : (offline.sources || []).includes(source)));
  const layerSelect = h("select", { disabled: frozen, onchange: (e) => send({ layer: Number(e.target.value) }) },
    h("option", { value: "-1" }, "all layers"),
    layers.map((layer) => h("option", { value: String(layer) }, `layer ${layer}`)));

  const hasSinks = () => {
    const sc = model.get("sink_cells") || {};
    return (sc.crops || []).length + (sc.global || []).length + (sc.separators || 0) > 0;
  };
  const sinkToggle = toggles(["mask", "show"], () => model.get("sinks"), (sinks) => send({ sinks }),
    (sinks) => hasSinks() && SINKED.includes(model.get("source"))
      && (!frozen || Boolean(savedPayload(model.get("source"), model.get("target"), sinks))),
    (sinks) => (sinks === "mask" ? "masked" : "shown"));
  const sinkBox = h("span", { class: "phi3lab-sink-toggle", title: "attention sinks: tokens that draw attention whatever is asked" },
    h("span", { class: "phi3lab-muted" }, "sinks: "), sinkToggle.bar);
  const sinkLine = h("div", { class: "phi3lab-info phi3lab-sinkline" });

  const sliderLabel = h("span", { class: "phi3lab-muted phi3lab-lens-label" });
  const slider = h("input", { type: "range", min: "0", max: String(layers.length - 1), step: "1",
    class: "phi3lab-lens-slider", "aria-label": "patch lens layer",
    oninput: (e) => send({ lens_layer: layers[Number(e.target.value)] }) });
  const sliderBox = h("span", { class: "phi3lab-lens-box" }, sliderLabel, slider);

  function lensLegend() {
    const layer = model.get("lens_layer");
    const samples = [0, lens ? lens.sure / 2 : 0.25, lens ? lens.sure : 0.5].map((p, i) =>
      h("span", { class: "phi3lab-lens-sample", style: { background: lens ? lens.veil : "#1f2937",
        color: `rgba(255, 255, 255, ${lens ? lensAlpha(lens, p) : 1})` } }, `${i === 2 ? "p ≥ " : "p = "}${format(p)}`));
    return h("div", { class: "phi3lab-legend", dataset: { kind: "lens" } },
      h("span", {}, `text: each cell's top next token under the logit lens at layer ${layer} (a leading ▁ is left out); its opacity, the token's probability:`),
      samples);
  }

  const info = h("div", { class: "phi3lab-info" });

  function refresh() {
    const source = model.get("source");
    const isLens = source === "lens";
    targets.forEach((node, i) => {
      node.classList.toggle("phi3lab-current", i === model.get("target"));
      if (frozen && !savedPayload(isLens ? "attention" : source, i, model.get("sinks"))) node.classList.remove("phi3lab-selectable");
    });
    sources.refresh();
    sources.enable();
    sinkToggle.refresh();
    sinkToggle.enable();
    sinkBox.hidden = !SINKED.includes(source);
    sinkLine.hidden = isLens;
    sinkLine.textContent = model.get("sink_info") || "";
    layerSelect.value = String(model.get("layer"));
    layerSelect.disabled = frozen || source !== "attention";
    sliderBox.hidden = !isLens;
    const layer = model.get("lens_layer");
    slider.value = String(Math.max(0, layers.indexOf(layer)));
    slider.disabled = frozen && !(lens && lens.complete);
    sliderLabel.textContent = `lens layer ${layer} `;
    info.textContent = isLens && !lensHeld(layer) ? `reading the patch lens at layer ${layer}…` : model.get("info");
    bar.replaceChildren(isLens ? lensLegend() : legend(model.get("scale"), "veil"));
    drawAll();
  }
  model.on("change:lens", () => { lens = decodeLens(model.get("lens")); refresh(); });
  for (const name of ["heat_crops", "heat_global", "scale", "target", "source", "layer", "info", "sinks", "sink_info", "lens_layer"]) {
    model.on(`change:${name}`, refresh);
  }
  refresh();

  let lensNote = "";
  if (frozen) {
    if (!lens) lensNote = " The patch lens was not read before saving (PatchExplorer(cache, source=\"lens\") saves it).";
    else if (lens.complete) lensNote = ` Patch lens: all ${lens.layers.length} layers saved, the slider works.`;
    else lensNote = ` Patch lens: only layer ${lens.held.join(", ")} saved — every layer's lens would pass the page's cap; move the slider with a kernel.`;
  }
  const sinkNote = hasSinks() ? " Sinks masked and shown are both saved." : "";
  const note = frozen ? offlineNote(
    `Saved page: click an answer token or switch between ${(offline.sources || []).join(" and ")} — `
    + `${(offline.targets || []).length} of ${model.get("targets").length} answer tokens saved (at most `
    + `${Math.round((offline.cap_bytes || 0) / 1024)} KiB per widget).${sinkNote}${lensNote} One layer at a time and rollout need a kernel.`) : null;
  mount(el,
    h("div", { class: "phi3lab-toolbar" }, h("span", { class: "phi3lab-muted" }, `image ${geo.image}: ${geo.width} × ${geo.height}, num_crops ${geo.num_crops}`),
      sources.bar, layerSelect, sinkBox, sliderBox),
    note,
    errorLine(model),
    h("div", { class: "phi3lab-targets" }, h("span", { class: "phi3lab-muted" }, "answer: "), targets),
    info,
    sinkLine,
    h("div", { class: "phi3lab-views" }, crops.node, global.node),
    bar,
    hoverLine,
  );
}

export default { render };
