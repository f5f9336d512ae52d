// AttributionView: the prompt's words and turns coloured by score, pictures with their regions, and the
// target tokens to switch between — words and regions on one scale, centred at zero, drawn below.
// State in: labels, targets, segments, pictures, method, scores, scale, maps, info, offline, error.
// State out: token (-1: the whole answer).
import { h, mount, bytes, rimColour, signOf, fractionOf, valueOf, paintChip, drawVeil, drawRim, legend, format, tokenText, isStatic, offlineNote, errorLine } from "./common.js";

const SIDE = 320;

function render({ model, el }) {
  const frozen = isStatic(model);
  const labels = model.get("labels");
  const offline = model.get("offline") || {};
  el.classList.add("phi3lab-w", "phi3lab-attribution");
  const saved = (token) => (offline.payloads || {})[String(token)];
  const send = (token) => {
    if (frozen) {
      const payload = saved(token);
      if (!payload) return;
      for (const [k, v] of Object.entries({ token, ...payload })) model.set(k, v);
      return;
    }
    model.set("token", token);
    model.save_changes();
  };

  const targets = [["whole answer", -1], ...model.get("targets").map((t, i) => [t, i])].map(([label, i]) =>
    h("span", { class: "phi3lab-chip" + (!frozen || saved(i) ? " phi3lab-selectable" : ""), dataset: { token: String(i) },
      title: frozen && !saved(i) ? "not saved in this page" : "", onclick: () => send(i) }, tokenText(label)));

  const unitChips = [];
  const text = model.get("segments").map(([role, pieces]) => h("div", { class: "phi3lab-turn" },
    h("b", { class: "phi3lab-muted" }, `${role}: `),
    pieces.map(([piece, unit]) => {
      if (unit === null || unit === undefined) return h("span", { class: "phi3lab-muted" }, piece);
      const shown = piece.trim() ? piece : piece.replace(/\n/g, "⏎").replace(/ /g, "␣"); // a unit of white space
      const node = h("span", { class: "phi3lab-chip", title: labels[unit], dataset: { unit: String(unit) } }, shown);
      unitChips.push(node);
      return node;
    })));

  const pictures = model.get("pictures").map((p) => {
    const img = new Image();
    const canvas = h("canvas", { width: SIDE, height: SIDE, class: "phi3lab-attribution-map", dataset: { image: String(p.image) } });
    img.onload = () => paintPictures();
    img.src = p.src;
    return { img, canvas, regions: p.regions || [],
      node: h("div", { class: "phi3lab-view" }, h("span", { class: "phi3lab-muted" }, `image ${p.image}`), canvas) };
  });

  function paintPictures() {
    const scale = model.get("scale");
    const scores = bytes(model.get("scores"));
    const maps = model.get("maps");
    let mapIndex = 0;
    pictures.forEach((p) => {
      const map = p.regions.length ? null : maps[mapIndex++];
      if (!p.img.naturalWidth) return;
      const side = SIDE / Math.max(p.img.naturalWidth, p.img.naturalHeight);
      const w = Math.round(p.img.naturalWidth * side);
      const hgt = Math.round(p.img.naturalHeight * side);
      p.canvas.width = w;
      p.canvas.height = hgt;
      const ctx = p.canvas.getContext("2d");
      ctx.drawImage(p.img, 0, 0, w, hgt);
      if (p.regions.length) { // one veil cell per canvas pixel, from the unit covering it (no seams)
        const fractions = new Array(w * hgt).fill(null);
        for (const [x0, y0, x1, y1, unit] of p.regions) {
          const f = fractionOf(scale, scores[unit]);
          for (let y = Math.round(y0 * hgt); y < Math.round(y1 * hgt); y++) {
            for (let x = Math.round(x0 * w); x < Math.round(x1 * w); x++) fractions[y * w + x] = f;
          }
        }
        drawVeil(ctx, scale, fractions, w, hgt, 0, 0, w, hgt);
        for (const [x0, y0, x1, y1, unit] of p.regions) {
          const rgb = rimColour(scale, scores[unit]);
          if (rgb) drawRim(ctx, rgb, fractionOf(scale, scores[unit]), Math.round(x0 * w), Math.round(y0 * hgt),
            Math.round(x1 * w) - Math.round(x0 * w), Math.round(y1 * hgt) - Math.round(y0 * hgt));
        }
      } else if (map) {
        const [ny, nx] = map.shape;
        const values = bytes(map.values);
        drawVeil(ctx, scale, Array.from(values, (b) => fractionOf(scale, b)), nx, ny, 0, 0, w, hgt);
        const differs = (k, r, c) => r < 0 || c < 0 || r >= ny || c >= nx || signOf(values[r * nx + c]) !== signOf(values[k]);
        for (let k = 0; k < values.length; k++) {
          const rgb = rimColour(scale, values[k]);
          const r = Math.floor(k / nx);
          const c = k % nx;
          if (rgb) drawRim(ctx, rgb, fractionOf(scale, values[k]), c * w / nx, r * hgt / ny, w / nx, hgt / ny,
            [differs(k, r - 1, c), differs(k, r, c + 1), differs(k, r + 1, c), differs(k, r, c - 1)]);
        }
      }
    });
  }

  const info = h("div", { class: "phi3lab-info" });
  const bar = h("div", { class: "phi3lab-legend-slot" });
  function paint() {
    const scores = bytes(model.get("scores"));
    const scale = model.get("scale");
    for (const node of unitChips) {
      const byte = scores[Number(node.dataset.unit)];
      const value = valueOf(scale, byte);
      paintChip(node, scale, byte, `${labels[Number(node.dataset.unit)]}: ${value === null ? "no signal" : (value > 0 ? "+" : "") + format(value)}`);
      node.dataset.score = byte ? String(byte - 128) : "none";
    }
    targets.forEach((node) => node.classList.toggle("phi3lab-current", Number(node.dataset.token) === model.get("token")));
    info.textContent = model.get("info");
    bar.replaceChildren(legend(scale, pictures.length ? "veil" : undefined));
    paintPictures();
  }
  for (const name of ["scores", "scale", "maps", "token", "info"]) model.on(`change:${name}`, paint);
  paint();

  const note = frozen ? offlineNote(
    `Saved page: click a target token to switch — ${(offline.tokens || []).length} of ${model.get("targets").length + 1} `
    + `saved (at most ${Math.round((offline.cap_bytes || 0) / 1024)} KiB per widget).`) : null;
  mount(el,
    h("div", { class: "phi3lab-toolbar" }, h("span", { class: "phi3lab-muted" }, `${model.get("method")} · target:`), targets),
    note,
    errorLine(model),
    info,
    h("div", { class: "phi3lab-strip" }, text),
    pictures.length ? h("div", { class: "phi3lab-views" }, pictures.map((p) => p.node)) : null,
    bar,
  );
}

export default { render };
