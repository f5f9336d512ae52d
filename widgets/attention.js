// AttentionExplorer: token strip with heat, aggregation switch, layer × head thumbnails.
// State in (from Python): items, roles, palette, layers, heads, heat, vmax, thumbs, thumb_bins,
// thumb_peaks, info, error. State out: row (hover/click), pinned, agg, focus.
import { h, mount, bytes, heatRGB, paintChip, colourBar, tokenText, debounce, isStatic, staticNote, errorLine, toggles } from "./common.js";

function render({ model, el }) {
  const frozen = isStatic(model);
  const items = model.get("items");
  const roles = model.get("roles");
  const palette = model.get("palette");
  const layers = model.get("layers");
  const heads = model.get("heads");
  el.classList.add("phi3lab-w", "phi3lab-attention");

  const send = (changes) => {
    for (const [k, v] of Object.entries(changes)) model.set(k, v);
    model.save_changes();
  };

  // --- toolbar: aggregation, focus, what is shown ------------------------------------------
  const info = h("div", { class: "phi3lab-info" });
  const aggs = toggles(["mean", "max", "rollout"], () => model.get("agg"), (agg) => {
    if (agg === "rollout" && model.get("agg") !== "rollout") info.textContent = "computing rollout (once, for every row)…";
    send({ agg });
  }, frozen);
  const focusLabel = h("span", { class: "phi3lab-muted" });
  const allButton = h("button", { type: "button", class: "phi3lab-button", disabled: frozen,
    onclick: () => send({ focus: [-1, -1] }) }, "all heads");
  const bar = h("div", { class: "phi3lab-colourbar-slot" });

  // --- strip ----------------------------------------------------------------------------------
  const chips = items.map(([label, role, row, first, count], i) => {
    const title = `#${first}${count > 1 ? ` ×${count}` : ""} · ${role}${row < 0 ? " · no captured row" : ""}`;
    const node = h("span", {
      class: "phi3lab-chip" + (row >= 0 ? " phi3lab-selectable" : ""),
      title,
      style: { boxShadow: `inset 0 -3px 0 ${roles[role] || "#999"}` },
      dataset: { index: String(i), row: String(row), role },
    }, tokenText(label));
    return node;
  });
  const strip = h("div", { class: "phi3lab-strip" }, chips);
  const hover = debounce((row) => { if (model.get("row") !== row) send({ row }); }, 40);
  if (!frozen) {
    for (const node of chips) {
      const row = Number(node.dataset.row);
      if (row < 0) continue;
      node.addEventListener("mouseenter", () => hover(row));
      node.addEventListener("click", () => send({ pinned: row, row }));
    }
    strip.addEventListener("mouseleave", () => hover(model.get("pinned")));
  }

  // --- layer × head grid ----------------------------------------------------------------------
  const canvases = [];
  const grid = h("table", { class: "phi3lab-grid" },
    h("tr", {}, h("th", {}, ""), heads.map((hd) => h("th", {}, `h${hd}`))),
    layers.map((layer, li) => h("tr", {},
      h("th", {}, h("button", { type: "button", class: "phi3lab-link", disabled: frozen,
        onclick: () => send({ focus: [layer, -1] }) }, `L${layer}`)),
      heads.map((hd, hi) => {
        const canvas = h("canvas", { class: "phi3lab-thumb", width: 1, height: 1,
          dataset: { layer: String(layer), head: String(hd) },
          onclick: frozen ? undefined : () => send({ focus: [layer, hd] }) });
        canvases.push([li, hi, canvas]);
        return h("td", {}, canvas);
      }))));

  function paintStrip() {
    const heat = bytes(model.get("heat"));
    const row = model.get("row");
    const pinned = model.get("pinned");
    chips.forEach((node, i) => {
      paintChip(node, palette, heat[i] || 0);
      node.classList.toggle("phi3lab-current", Number(node.dataset.row) === row);
      node.classList.toggle("phi3lab-pinned", Number(node.dataset.row) === pinned);
    });
    info.textContent = model.get("info");
    bar.replaceChildren(colourBar(palette, model.get("vmax"), "share of attention"));
  }

  function paintGrid() {
    const thumbs = bytes(model.get("thumbs"));
    const bins = model.get("thumb_bins");
    const peaks = model.get("thumb_peaks");
    const [fl, fh] = model.get("focus");
    for (const [li, hi, canvas] of canvases) {
      const k = li * heads.length + hi;
      canvas.width = bins;
      const ctx = canvas.getContext("2d");
      const image = ctx.createImageData(bins, 1);
      for (let b = 0; b < bins; b++) {
        const rgb = heatRGB(palette, thumbs[k * bins + b] / 255);
        image.data.set([rgb[0], rgb[1], rgb[2], thumbs[k * bins + b] ? 255 : 40], 4 * b);
      }
      ctx.putImageData(image, 0, 0);
      canvas.title = `layer ${layers[li]} head ${heads[hi]} · peak ${peaks[k]}`;
      const on = (fl === -1 || fl === layers[li]) && (fh === -1 || fh === heads[hi]);
      canvas.classList.toggle("phi3lab-dim", !on);
    }
    focusLabel.textContent = fl === -1 && fh === -1 ? "all layers and heads"
      : `layer ${fl === -1 ? "all" : fl}, head ${fh === -1 ? "all" : fh}`;
    aggs.refresh();
  }

  model.on("change:heat", paintStrip);
  model.on("change:row", paintStrip);
  model.on("change:pinned", paintStrip);
  model.on("change:thumbs", paintGrid);
  model.on("change:focus", paintGrid);
  model.on("change:agg", paintGrid);
  paintStrip();
  paintGrid();

  mount(el,
    h("div", { class: "phi3lab-toolbar" }, aggs.bar, allButton, focusLabel),
    frozen ? staticNote() : null,
    errorLine(model),
    info,
    strip,
    bar,
    h("details", { class: "phi3lab-section", open: true },
      h("summary", {}, "layer × head (each thumbnail: that head's attention over the strip)"), grid),
  );
}

export default { render };
