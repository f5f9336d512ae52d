// AttributionView: the prompt's words and turns coloured by score, pictures with their score map,
// and the target tokens to switch between. State in: labels, targets, segments, pictures, colours,
// scores, scale, maps, map_scale, info, error. State out: token (-1: the whole answer).
import { h, mount, bytes, tokenText, isStatic, staticNote, errorLine } from "./common.js";

function render({ model, el }) {
  const frozen = isStatic(model);
  const [positive, negative] = model.get("colours");
  const labels = model.get("labels");
  el.classList.add("phi3lab-w", "phi3lab-attribution");
  const send = (token) => { model.set("token", token); model.save_changes(); };

  // signed byte (0..254 around 127) -> [rgb, alpha]
  const colourOf = (byte) => {
    const v = (byte - 127) / 127;
    return [v >= 0 ? positive : negative, Math.min(Math.abs(v), 1) * 0.85];
  };

  const targets = [["whole answer", -1], ...model.get("targets").map((t, i) => [t, i])].map(([label, i]) =>
    h("span", { class: "phi3lab-chip phi3lab-selectable", dataset: { token: String(i) },
      onclick: frozen ? undefined : () => send(i) }, tokenText(label)));

  const unitChips = [];
  const text = model.get("segments").map(([role, pieces]) => h("div", { class: "phi3lab-turn" },
    h("b", { class: "phi3lab-muted" }, `${role}: `),
    pieces.map(([piece, unit]) => {
      if (unit === null || unit === undefined) return h("span", { class: "phi3lab-muted" }, piece);
      const node = h("span", { class: "phi3lab-chip", title: labels[unit], dataset: { unit: String(unit) } }, piece);
      unitChips.push(node);
      return node;
    })));

  const pictures = model.get("pictures").map((p) => {
    const img = new Image();
    const canvas = h("canvas", { width: 320, height: 320, class: "phi3lab-attribution-map", dataset: { image: String(p.image) } });
    img.onload = () => paintPictures();
    img.src = p.src;
    return { img, canvas, node: h("div", { class: "phi3lab-view" }, h("span", { class: "phi3lab-muted" }, `image ${p.image}`), canvas) };
  });

  function paintPictures() {
    const maps = model.get("maps");
    pictures.forEach((p, k) => {
      if (!p.img.naturalWidth || !maps[k]) return;
      const side = 320 / Math.max(p.img.naturalWidth, p.img.naturalHeight);
      const w = Math.round(p.img.naturalWidth * side);
      const hgt = Math.round(p.img.naturalHeight * side);
      p.canvas.width = w;
      p.canvas.height = hgt;
      const ctx = p.canvas.getContext("2d");
      ctx.drawImage(p.img, 0, 0, w, hgt);
      const [ny, nx] = maps[k].shape;
      const values = bytes(maps[k].values);
      for (let r = 0; r < ny; r++) {
        for (let c = 0; c < nx; c++) {
          const [rgb, alpha] = colourOf(values[r * nx + c]);
          if (alpha <= 0) continue;
          ctx.fillStyle = `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${alpha * 0.8})`;
          ctx.fillRect(c * w / nx, r * hgt / ny, w / nx + 0.5, hgt / ny + 0.5);
        }
      }
    });
  }

  const info = h("div", { class: "phi3lab-info" });
  function paint() {
    const scores = bytes(model.get("scores"));
    for (const node of unitChips) {
      const byte = scores[Number(node.dataset.unit)];
      const [rgb, alpha] = colourOf(byte);
      node.style.background = `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${alpha})`;
      node.style.color = alpha > 0.45 ? "#ffffff" : "";
      node.dataset.score = String(byte - 127);
    }
    targets.forEach((node) => node.classList.toggle("phi3lab-current", Number(node.dataset.token) === model.get("token")));
    info.textContent = model.get("info");
    paintPictures();
  }
  for (const name of ["scores", "maps", "token", "info"]) model.on(`change:${name}`, paint);
  paint();

  mount(el,
    h("div", { class: "phi3lab-toolbar" }, h("span", { class: "phi3lab-muted" }, `${model.get("method")} · target:`), targets),
    frozen ? staticNote() : null,
    errorLine(model),
    info,
    h("div", { class: "phi3lab-strip" }, text),
    pictures.length ? h("div", { class: "phi3lab-views" }, pictures.map((p) => p.node)) : null,
  );
}

export default { render };
