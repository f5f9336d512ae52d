// PatchExplorer: the picture in its HD canvas, crops view and global view, one scale for both.
// The picture keeps its colours: a neutral veil covers cells with little or no signal and lifts where
// the value is high; signed values (attribution) add a rim of their sign's colour.
// State in: picture, geometry, crop_pos, global_pos, targets, layers, sources, heat_crops, heat_global,
// scale, info, offline, error. State out: target, source, layer.
import { h, mount, bytes, uint32s, rimColour, signOf, fractionOf, valueOf, drawVeil, drawRim, legend, format, tokenText, isStatic, offlineNote, errorLine, toggles } from "./common.js";

const SIDE = 360; // display pixels of the canvas' longer side, per view

function render({ model, el }) {
  const frozen = isStatic(model);
  const geo = model.get("geometry");
  const offline = model.get("offline") || {};
  const [W, H] = geo.padded;
  const [left, top, right, bottom] = geo.pad_box;
  const [rows, cols] = geo.grid;
  const cells = geo.cells;
  const cropPos = uint32s(model.get("crop_pos"));
  const globalPos = uint32s(model.get("global_pos"));
  const s = SIDE / Math.max(W, H);
  const dw = Math.round(W * s);
  const dh = Math.round(H * s);
  el.classList.add("phi3lab-w", "phi3lab-patches");

  const savedPayload = (source, target) => ((offline.payloads || {})[source] || {})[String(target)];
  const send = (changes) => {
    if (frozen) {
      const next = { target: model.get("target"), source: model.get("source"), ...changes };
      const payload = savedPayload(next.source, next.target);
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
    const canvas = h("canvas", { width: dw, height: dh, class: `phi3lab-canvas-${kind}`, dataset: { view: kind } });
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

  function draw(view) {
    const ctx = view.canvas.getContext("2d");
    ctx.clearRect(0, 0, dw, dh);
    // white padding, hatched so it does not read as picture
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, dw, dh);
    ctx.strokeStyle = "rgba(0, 0, 0, 0.12)";
    ctx.beginPath();
    for (let d = -dh; d < dw; d += 8) { ctx.moveTo(d, dh); ctx.lineTo(d + dh, 0); }
    ctx.stroke();
    if (picture.complete && picture.naturalWidth) {
      ctx.drawImage(picture, left * s, top * s, (right - left) * s, (bottom - top) * s);
    }
    const isCrops = view.kind === "crops";
    const scale = model.get("scale");
    const heat = bytes(model.get(isCrops ? "heat_crops" : "heat_global"));
    const nr = isCrops ? rows * cells : cells;
    const nc = isCrops ? cols * cells : cells;
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
      ctx.strokeStyle = "#111827";
      ctx.lineWidth = 2;
      ctx.strokeRect(cell.box[0] * s, cell.box[1] * s, cell.box[2] * s, cell.box[3] * s);
    }
    view.canvas.dataset.target = String(model.get("target"));
  }

  const hoverLine = h("div", { class: "phi3lab-info", "aria-live": "polite" }, "Hover a cell to see its image token.");
  function describeHover() {
    const a = cellAt("crops", hovered);
    const b = cellAt("global", hovered);
    if (!a || !b) { hoverLine.textContent = "Hover a cell to see its image token."; return; }
    const scale = model.get("scale");
    const say = (byte) => { const v = valueOf(scale, byte); return v === null ? "no signal" : `≈${format(v)}`; };
    const heatA = bytes(model.get("heat_crops"))[a.index];
    const heatB = bytes(model.get("heat_global"))[b.index];
    const crop = Math.floor(a.r / cells) * cols + Math.floor(a.c / cells) + 1;
    hoverLine.textContent = `crop ${crop}, cell (${a.r}, ${a.c}) → token #${cropPos[a.index]}: ${say(heatA)}`
      + ` · global view cell (${b.r}, ${b.c}) → token #${globalPos[b.index]}: ${say(heatB)}`;
  }

  function drawAll() {
    draw(crops);
    draw(global);
    describeHover();
  }
  picture.onload = drawAll;
  picture.src = model.get("picture");

  // --- answer tokens, source, layer -------------------------------------------------------------
  const targets = model.get("targets").map(([label, row], i) =>
    h("span", { class: "phi3lab-chip phi3lab-selectable", title: `answer token ${i} (row ${row})`,
      dataset: { target: String(i) }, onclick: () => send({ target: i }) }, tokenText(label)));
  const sources = toggles(model.get("sources"), () => model.get("source"), (source) => {
    if (!frozen && source === "rollout" && model.get("source") !== "rollout") info.textContent = "computing rollout (once, for every answer token)…";
    send({ source });
  }, (source) => !frozen || (offline.sources || []).includes(source));
  const layerSelect = h("select", { disabled: frozen, onchange: (e) => send({ layer: Number(e.target.value) }) },
    h("option", { value: "-1" }, "all layers"),
    model.get("layers").map((layer) => h("option", { value: String(layer) }, `layer ${layer}`)));
  const info = h("div", { class: "phi3lab-info" });

  function refresh() {
    targets.forEach((node, i) => {
      node.classList.toggle("phi3lab-current", i === model.get("target"));
      if (frozen && !savedPayload(model.get("source"), i)) node.classList.remove("phi3lab-selectable");
    });
    sources.refresh();
    layerSelect.value = String(model.get("layer"));
    layerSelect.disabled = frozen || model.get("source") !== "attention";
    info.textContent = model.get("info");
    bar.replaceChildren(legend(model.get("scale"), "veil"));
    drawAll();
  }
  for (const name of ["heat_crops", "heat_global", "scale", "target", "source", "layer", "info"]) model.on(`change:${name}`, refresh);
  refresh();

  const note = frozen ? offlineNote(
    `Saved page: click an answer token or switch between ${(offline.sources || []).join(" and ")} — `
    + `${(offline.targets || []).length} of ${model.get("targets").length} answer tokens saved (at most `
    + `${Math.round((offline.cap_bytes || 0) / 1024)} KiB per widget). One layer at a time and rollout need a kernel.`) : null;
  mount(el,
    h("div", { class: "phi3lab-toolbar" }, h("span", { class: "phi3lab-muted" }, `image ${geo.image}: ${geo.width} × ${geo.height}, num_crops ${geo.num_crops}`), sources.bar, layerSelect),
    note,
    errorLine(model),
    h("div", { class: "phi3lab-targets" }, h("span", { class: "phi3lab-muted" }, "answer: "), targets),
    info,
    h("div", { class: "phi3lab-views" }, crops.node, global.node),
    bar,
    hoverLine,
  );
}

export default { render };
