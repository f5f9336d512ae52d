// Renders saved anywidget state in an exported notebook page (nbconvert --to html), offline.
//
// nbconvert writes the notebook's widget state into one <script type="...widget-state+json">
// and a <script type="...widget-view+json"> where each widget was shown; this script, given to
// nbconvert as HTMLExporter.widget_renderer_url, renders every view whose model carries an
// anywidget module (_esm) with that module, against a model that holds the saved values. There is
// no kernel: get/set/on work on the saved state, save_changes and send do nothing, and the widget
// sees get("__static") === true so it can say that exploring needs a kernel. Nothing is fetched.
(function () {
  "use strict";
  var STATE = "application/vnd.jupyter.widget-state+json";
  var VIEW = "application/vnd.jupyter.widget-view+json";

  function savedModel(values) {
    var listeners = {};
    return {
      get: function (name) { return name === "__static" ? true : values[name]; },
      set: function (name, value) {
        var old = values[name];
        values[name] = value;
        if (old !== value) (listeners["change:" + name] || []).forEach(function (cb) { cb(); });
      },
      save_changes: function () {},
      send: function () {},
      on: function (event, cb) { (listeners[event] = listeners[event] || []).push(cb); },
      off: function (event, cb) {
        if (!event) { listeners = {}; return; }
        listeners[event] = (listeners[event] || []).filter(function (x) { return cb && x !== cb; });
      },
    };
  }

  var styled = {};
  function addStyle(id, css) {
    if (!css || styled[id]) return;
    styled[id] = true;
    var style = document.createElement("style");
    style.setAttribute("data-anywidget-id", id);
    style.textContent = css;
    document.head.appendChild(style);
  }

  async function renderView(node, saved) {
    var host = document.createElement("div");
    node.after(host);
    var id = JSON.parse(node.textContent).model_id;
    var entry = saved[id];
    if (!entry || typeof entry.state._esm !== "string") {
      host.textContent = "[a widget whose saved state is not in this page]";
      return;
    }
    var values = Object.assign({}, entry.state);
    addStyle(values._anywidget_id || id, values._css);
    var url = URL.createObjectURL(new Blob([values._esm], { type: "text/javascript" }));
    var module = await import(url);
    URL.revokeObjectURL(url);
    var widget = module.default || module;
    if (typeof widget === "function") widget = await widget();
    var model = savedModel(values);
    if (widget.initialize) await widget.initialize({ model: model });
    await widget.render({ model: model, el: host });
  }

  async function renderAll() {
    var stateNode = document.querySelector('script[type="' + STATE + '"]');
    var saved = stateNode ? (JSON.parse(stateNode.textContent).state || {}) : {};
    var views = document.querySelectorAll('script[type="' + VIEW + '"]');
    for (var i = 0; i < views.length; i++) {
      try {
        await renderView(views[i], saved);
      } catch (error) {
        console.error("phi3lab embed: a saved widget could not be shown", error);
      }
    }
    document.body.setAttribute("data-phi3lab-widgets", "rendered");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", renderAll);
  else renderAll();
})();
