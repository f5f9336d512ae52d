// AttentionExplorer: token strip with heat, aggregation switch, layer × head thumbnails, one scale each.
// State in (from Python): items, roles, layers, heads, heat, scale, thumbs, thumb_bins, thumb_scale,
// thumb_peaks, info, offline, error. State out: row (hover/click), pinned, agg, focus.
// Without a kernel (an exported page) hovering and clicking read the saved `offline` rows.
import { h, mount, bytes, uints, colourOf, paintChip, valueOf, css, legend, format, tokenText, debounce, isStatic, offlineNote, errorLine, toggles } from "./common.js";

function render({ model, el }) {
  const frozen = isStatic(model);
  const items = model.get("items");
  const roles = model.get("roles");
  const layers = model.get("layers");
  const heads = model.get("heads");
  const offline = model.get("offline") || {};
  const saved = new Map((offline.rows || []).map((row, i) => [row, i]));
  el.classList.add("phi3lab-w", "phi3lab-attention");

  // In an exported page, a row's heat comes from the saved payload: its strongest chips, on its own scale.
  function savedRow(row) {
    const i = saved.get(row);
    if (i === undefined) return null;
    const top = offline.top;
    const index = uints(offline.index, offline.index_bytes).slice(i * top, (i + 1) * top);
    const values = bytes(offline.values).slice(i * top, (i + 1) * top);
    const heat = new Uint8Array(items.length);
    index.forEach((chip, k) => { heat[chip] = values[k]; });
    const scale = { ...model.get("scale"), vmax: offline.vmax[i], signal: offline.vmax[i] >= offline.floor };
    let binary = "";
    heat.forEach((b) => { binary += String.fromCharCode(b); });
    const at = items.findIndex((item) => item[2] === row);
    const label = at >= 0 ? `#${items[at][3]} '${tokenText(items[at][0])}'` : `row ${row}`;
    return { heat: btoa(binary), scale,
      info: `row at position ${label}: ${offline.what} (saved in this page: its ${top} strongest of ${offline.chips} chips; the rest blank)` };
  }

  const send = (changes) => {
    if (frozen) {
      if (changes.row === undefined) return;
      const payload = savedRow(changes.row);
      if (!payload) return;
      for (const [k, v] of Object.entries({ ...changes, ...payload })) model.set(k, v);
      return;
    }
    for (const [k, v] of Object.entries(changes)) model.set(k, v);
    model.save_changes();
  };

  // --- toolbar: aggregation, focus, what is shown ------------------------------------------
  const info = h("div", { class: "phi3lab-info" });
  const aggs = toggles(["mean", "max", "rollout"], () => model.get("agg"), (agg) => {
    if (agg === "rollout" && model.get("agg") !== "rollout") info.textContent = "computing rollout (once, for every row)…";
    send({ agg });
  }, () => !frozen);
  const focusLabel = h("span", { class: "phi3lab-muted phi3lab-focus" });
  const allButton = h("button", { type: "button", class: "phi3lab-button phi3lab-all", disabled: frozen,
    onclick: () => send({ focus: [-1, -1] }) }, "all heads");
  const bar = h("div", { class: "phi3lab-legend-slot" });
  const gridBar = h("div", { class: "phi3lab-legend-slot" });

  // --- strip ----------------------------------------------------------------------------------
  const chips = items.map(([label, role, row, first, count], i) => h("span", {
    class: "phi3lab-chip" + (row >= 0 && (!frozen || saved.has(row)) ? " phi3lab-selectable" : ""),
    style: { boxShadow: `inset 0 -3px 0 ${roles[role] || "#999"}` },
    dataset: { index: String(i), row: String(row), role, first: String(first), count: String(count) },
  }, tokenText(label)));
  const strip = h("div", { class: "phi3lab-strip" }, chips);
  const hover = debounce((row) => { if (model.get("row") !== row) send({ row }); }, 40);
  for (const node of chips) {
    const row = Number(node.dataset.row);
    if (row < 0 || (frozen && !saved.has(row))) continue;
    node.addEventListener("mouseenter", () => hover(row));
    node.addEventListener("click", () => send({ pinned: row, row }));
  }
  strip.addEventListener("mouseleave", () => hover(model.get("pinned")));

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
  const gridNote = h("div", { class: "phi3lab-note", hidden: true });

  function paintStrip() {
    const heat = bytes(model.get("heat"));
    const scale = model.get("scale");
    const row = model.get("row");
    const pinned = model.get("pinned");
    chips.forEach((node, i) => {
      const value = valueOf(scale, heat[i]);
      const where = `#${node.dataset.first}${Number(node.dataset.count) > 1 ? ` ×${node.dataset.count}` : ""} · ${node.dataset.role}`;
      const extra = Number(node.dataset.row) < 0 ? " · no captured row" : frozen && !saved.has(Number(node.dataset.row)) ? " · not saved in this page" : "";
      paintChip(node, scale, heat[i], `${where} · ${value === null ? "no signal" : format(value)}${extra}`);
      node.classList.toggle("phi3lab-current", Number(node.dataset.row) === row);
      node.classList.toggle("phi3lab-pinned", Number(node.dataset.row) === pinned);
    });
    info.textContent = model.get("info");
    bar.replaceChildren(legend(scale));
    gridNote.hidden = !frozen || row === savedPinned;
    gridNote.textContent = `The grid shows the row saved with the page (#${items.find((it) => it[2] === savedPinned)?.[3] ?? savedPinned}); other rows' heads need a kernel.`;
  }
  const savedPinned = model.get("pinned");

  function paintGrid() {
    const thumbs = bytes(model.get("thumbs"));
    const scale = model.get("thumb_scale");
    const bins = model.get("thumb_bins");
    const peaks = model.get("thumb_peaks");
    const rollout = model.get("agg") === "rollout";
    const [fl, fh] = model.get("focus");
    for (const [li, hi, canvas] of canvases) {
      const k = li * heads.length + hi;
      canvas.width = bins;
      const ctx = canvas.getContext("2d");
      const image = ctx.createImageData(bins, 1);
      for (let b = 0; b < bins; b++) {
        const rgb = colourOf(scale, thumbs[k * bins + b]);
        image.data.set(rgb ? [rgb[0], rgb[1], rgb[2], 255] : [0, 0, 0, 0], 4 * b);
      }
      ctx.putImageData(image, 0, 0);
      canvas.title = `layer ${layers[li]} head ${heads[hi]} · peak ${format(peaks[k])}${frozen ? "" : " · click: this head only"}`;
      const on = rollout || ((fl === -1 || fl === layers[li]) && (fh === -1 || fh === heads[hi]));
      canvas.classList.toggle("phi3lab-dim", !on);
    }
    focusLabel.textContent = rollout ? "rollout: every layer and head (no focus)"
      : fl === -1 && fh === -1 ? "all layers and heads" : `layer ${fl === -1 ? "all" : fl}, head ${fh === -1 ? "all" : fh}`;
    allButton.disabled = frozen || rollout || (fl === -1 && fh === -1);
    gridBar.replaceChildren(legend(scale));
    aggs.refresh();
  }

  for (const name of ["heat", "scale", "row", "pinned", "info"]) model.on(`change:${name}`, paintStrip);
  for (const name of ["thumbs", "thumb_scale", "focus", "agg"]) model.on(`change:${name}`, paintGrid);
  paintStrip();
  paintGrid();

  const note = frozen ? offlineNote(
    `Saved page: hover or click a token to see where it looks — ${saved.size} of ${offline.rows_captured || 0} rows saved, `
    + `each as its ${offline.top || 0} strongest chips (${offline.what || ""}; at most ${Math.round((offline.cap_bytes || 0) / 1024)} KiB per widget). `
    + "Max, rollout and one head at a time need a kernel.") : null;
  mount(el,
    h("div", { class: "phi3lab-toolbar" }, aggs.bar, allButton, focusLabel),
    note,
    errorLine(model),
    info,
    strip,
    bar,
    h("details", { class: "phi3lab-section", open: true },
      h("summary", {}, "layer × head (each thumbnail: that head's attention over the strip, one scale for all)"),
      gridNote, grid, gridBar),
  );
}

export default { render };
