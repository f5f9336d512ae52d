// ChatWidget: messages, streaming answer, stop, system prompt, temperature, image upload.
// State in: model_name, vision, messages, pending, busy, error; both ways: system, temperature,
// max_new_tokens. Messages out: send, stop, reset, image, clear_images. Messages in: delta.
import { h, mount, isStatic, offlineNote, errorLine } from "./common.js";

const PICTURE = /^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]*$/;

function render({ model, el }) {
  const frozen = isStatic(model);
  el.classList.add("phi3lab-w", "phi3lab-chat");

  const system = h("textarea", { rows: 1, placeholder: "system prompt (optional)", class: "phi3lab-system",
    disabled: frozen, oninput: (e) => { model.set("system", e.target.value); model.save_changes(); } });
  const temperatureValue = h("span", { class: "phi3lab-muted" });
  const temperature = h("input", { type: "range", min: "0", max: "1.5", step: "0.05", disabled: frozen,
    class: "phi3lab-temperature",
    oninput: (e) => { model.set("temperature", Number(e.target.value)); model.save_changes(); } });
  const maxTokens = h("input", { type: "number", min: "1", max: "4096", step: "1", style: { width: "5em" },
    disabled: frozen, onchange: (e) => { model.set("max_new_tokens", Math.max(1, Number(e.target.value) || 1)); model.save_changes(); } });
  const newChat = h("button", { type: "button", class: "phi3lab-button", disabled: frozen,
    onclick: () => model.send({ type: "reset" }) }, "New chat");

  const log = h("div", { class: "phi3lab-log", "aria-live": "polite" });
  const pending = h("div", { class: "phi3lab-pending" });
  const input = h("textarea", { rows: 2, placeholder: frozen ? "" : "Message (Enter sends, Shift+Enter: new line)",
    class: "phi3lab-message", disabled: frozen });
  const sendButton = h("button", { type: "button", class: "phi3lab-button phi3lab-send", disabled: frozen,
    onclick: () => submit() }, "Send");
  const stopButton = h("button", { type: "button", class: "phi3lab-button phi3lab-stop", disabled: true,
    onclick: () => model.send({ type: "stop" }) }, "Stop");
  const file = h("input", { type: "file", accept: "image/*", multiple: true, hidden: true,
    onchange: (e) => upload(e.target.files) });
  const attach = h("button", { type: "button", class: "phi3lab-button phi3lab-attach", disabled: frozen,
    onclick: () => file.click() }, "Image…");

  let streaming = null; // the assistant bubble being written

  function submit() {
    const text = input.value.trim();
    if (!text || model.get("busy")) return;
    input.value = "";
    model.send({ type: "send", text });
  }
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); submit(); }
  });

  function upload(files) {
    for (const f of files) {
      const reader = new FileReader();
      reader.onload = () => model.send({ type: "image", name: f.name, data: reader.result });
      reader.readAsDataURL(f);
    }
    file.value = "";
  }

  function bubble(message) {
    const names = message.image_labels || [];
    const pictures = (message.images || []).map((src, k) => {
      const name = names[k] || `picture ${k + 1}`;
      if (typeof src !== "string" || !PICTURE.test(src)) return h("span", { class: "phi3lab-placeholder" }, `[${name}]`);
      return h("figure", { class: "phi3lab-picture" }, h("img", { src, alt: name, title: name }), h("figcaption", {}, name));
    });
    const role = ["user", "assistant", "system"].includes(message.role) ? message.role : "system";
    return h("div", { class: `phi3lab-msg phi3lab-msg-${role}` }, pictures, String(message.content ?? ""));
  }

  function drawMessages() {
    const nodes = [];
    if (model.get("system")) nodes.push(bubble({ role: "system", content: model.get("system") }));
    for (const m of model.get("messages")) {
      nodes.push(bubble(m));
      if (m.stats) nodes.push(h("div", { class: "phi3lab-stats" }, m.stats));
    }
    streaming = null;
    if (model.get("busy")) {
      streaming = h("div", { class: "phi3lab-msg phi3lab-msg-assistant phi3lab-streaming" }, "");
      nodes.push(streaming);
    }
    log.replaceChildren(...nodes);
    log.scrollTop = log.scrollHeight;
  }

  function drawControls() {
    const busy = model.get("busy");
    if (system.value !== model.get("system")) system.value = model.get("system");
    system.disabled = frozen || model.get("messages").length > 0;
    system.title = system.disabled && !frozen ? "press New chat to change the system prompt" : "";
    temperature.value = String(model.get("temperature"));
    temperatureValue.textContent = `temperature ${model.get("temperature").toFixed(2)}`;
    maxTokens.value = String(model.get("max_new_tokens"));
    sendButton.disabled = frozen || busy;
    stopButton.disabled = frozen || !busy;
    attach.hidden = !model.get("vision");
    pending.replaceChildren(...model.get("pending").map((p) => h("img", { src: p.thumb, title: p.name, alt: p.name })));
  }

  model.on("msg:custom", (msg) => {
    if (msg && msg.type === "delta" && streaming) {
      streaming.textContent += msg.text;
      log.scrollTop = log.scrollHeight;
    }
  });
  model.on("change:messages", () => { drawMessages(); drawControls(); });
  model.on("change:busy", () => { drawMessages(); drawControls(); });
  for (const name of ["system", "temperature", "max_new_tokens", "pending", "vision"]) model.on(`change:${name}`, drawControls);
  model.on("change:system", drawMessages);

  drawMessages();
  drawControls();
  mount(el,
    h("div", { class: "phi3lab-settings" },
      h("span", { class: "phi3lab-muted" }, model.get("model_name")), system, temperatureValue, temperature,
      h("label", { class: "phi3lab-muted" }, "max tokens ", maxTokens), newChat),
    frozen ? offlineNote("Saved conversation: the messages as they were when the notebook ran. Chatting needs a kernel.") : null,
    errorLine(model),
    log,
    pending,
    h("div", { class: "phi3lab-input" }, input, attach, file, sendButton, stopButton),
  );
}

export default { render };
