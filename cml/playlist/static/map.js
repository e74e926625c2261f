// The library map: a WebGL scatter of every track (plotly scattergl), hover to read, click to listen,
// box/lasso or shift-click to pick seeds, and the playlist cml builds from them drawn as a path.
// One UI for the `cml map` page (HTTP) and the notebook widget (Jupyter comm): only the transport differs.
// Track names, labels and paths are data: they reach the DOM as text (textContent) and plotly's hover
// labels HTML-escaped, never as markup.

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#843c39", "#7b4173"];
const AUDIO_NOTE = { ok: "", missing: "audio file missing", none: "no audio file", broken: "audio cannot be played" };

export function httpTransport() {
  return {
    async call(name, body) {
      const response = await fetch(name === "map" ? "/api/map" : `/api/${name}`,
        name === "map" ? {} : { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body) });
      return response.json();
    },
    async audioUrl(row) { return `/audio/${row}`; },
  };
}

export function commTransport(model) {
  let next = 0;
  const waiting = new Map();
  model.on("msg:custom", (msg, buffers) => {
    const resolve = waiting.get(msg.id);
    if (resolve) { waiting.delete(msg.id); resolve([msg.result, buffers]); }
  });
  const ask = (name, body) => new Promise((resolve) => {
    const id = ++next;
    waiting.set(id, resolve);
    model.send({ id, name, body });
  });
  const blobUrl = async (name, body) => {
    const [result, buffers] = await ask(name, body);
    if (result.error || !buffers.length) return null;
    return URL.createObjectURL(new Blob([buffers[0]], { type: result.type }));
  };
  return {
    async call(name, body) { return (await ask(name, body))[0]; },
    audioUrl: (row) => blobUrl("audio", { row }),
    plotlyUrl: () => blobUrl("plotly", {}),
  };
}

const escapeHtml = (text) => String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  node.textContent = text;
  return node;
}

function layout(root) {
  root.replaceChildren();
  root.style.cssText = "display:flex;font:13px system-ui,sans-serif;height:100%;min-height:640px";
  const plot = element("div", { id: "cml-map", style: "flex:1;min-width:0;height:640px" });
  const side = element("div", { style: "width:300px;padding:8px;overflow:auto;border-left:1px solid #ddd" });
  side.innerHTML = `
    <div id="cml-status">loading…</div><div id="cml-dropped" style="color:#a40"></div>
    <label>colour by <select id="cml-colour"></select></label>
    <p style="margin:6px 0">Box or lasso select (toolbar) or shift-click points to pick seeds; click to listen.</p>
    <div><b>Seeds</b> <button id="cml-clear">clear</button></div><ol id="cml-seeds"></ol>
    <label>mode <select id="cml-mode"></select></label>
    <label>length <input id="cml-length" type="number" min="1" value="20" style="width:4em"></label>
    <button id="cml-make">make playlist</button>
    <div id="cml-message" style="margin:6px 0;color:#444"></div>
    <div id="cml-now"></div><audio id="cml-player" controls style="width:100%"></audio>
    <div><b>Playlist</b> <button id="cml-playall" disabled>play in order</button></div><ol id="cml-playlist"></ol>
    <input id="cml-name" placeholder="playlist name" value="cml map playlist" style="width:12em">
    <button id="cml-save" disabled>save M3U8</button> <button id="cml-push" disabled>push to Spotify</button>`;
  root.append(plot, side);
  const $ = (id) => side.querySelector(`#cml-${id}`);
  return { plot, $ };
}

export async function mount(root, transport) {
  const { plot, $ } = layout(root);
  const data = await transport.call("map", {});
  if (data.error) { $("status").textContent = data.error; return; }
  const n = data.ids.length;
  const state = { seeds: [], playlist: null, queue: [], audio: data.audio.slice() };
  for (const mode of data.modes) $("mode").append(element("option", { value: mode }, mode));
  for (const key of ["labels", "clusters"]) {
    if (data[key]) $("colour").append(element("option", { value: key }, key.slice(0, -1)));
  }
  $("colour").append(element("option", { value: "none" }, "nothing"));
  const share = data.preservation && Math.round(100 * data.preservation[data.projection]);
  const kept = data.preservation ? ` (keeps ${share}% of nearest neighbours)` : "";
  $("status").textContent = `${n} tracks drawn · ${data.projection}${kept}`;
  $("dropped").textContent = data.dropped.join("\n");
  $("push").title = data.spotify ? "" : "set SPOTIPY_CLIENT_ID and SPOTIPY_REDIRECT_URI to push";

  const hover = (row) => {
    const parts = [`<b>${escapeHtml(data.names[row])}</b>`];
    if (data.labels) parts.push(`label: ${escapeHtml(data.labels[row] ?? "–")}`);
    if (data.clusters) parts.push(`cluster: ${escapeHtml(data.clusters[row] ?? "–")}`);
    if (AUDIO_NOTE[state.audio[row]]) parts.push(AUDIO_NOTE[state.audio[row]]);
    return parts.join("<br>");
  };
  const groupsOf = (key) => {
    const groups = new Map();
    for (let row = 0; row < n; row++) {
      const name = key === "none" ? "track" : (data[key][row] ?? "–");
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name).push(row);
    }
    return [...groups.entries()].sort((a, b) => String(a[0]).localeCompare(String(b[0]), undefined, { numeric: true }));
  };
  const size = n > 20000 ? 3 : n > 2000 ? 5 : 8;
  const pointTrace = (name, rows, index) => ({
    type: "scattergl", mode: "markers", name: String(name), x: rows.map((r) => data.x[r]),
    y: rows.map((r) => data.y[r]), customdata: rows, hovertext: rows.map(hover), hoverinfo: "text",
    marker: { size, color: PALETTE[index % PALETTE.length], opacity: 0.75 },
  });
  const overlay = (name, rows, style, type = "scattergl") => ({ type, name, x: rows.map((r) => data.x[r]),
    y: rows.map((r) => data.y[r]), customdata: rows, hovertext: rows.map(hover), hoverinfo: "text", ...style });
  let groupCount = 0;

  function draw() {
    const groups = groupsOf($("colour").value);
    groupCount = groups.length;
    const silent = [];
    for (let row = 0; row < n; row++) if (state.audio[row] !== "ok") silent.push(row);
    const order = state.playlist ? state.playlist.rows : [];
    const traces = [...groups.map(([name, rows], i) => pointTrace(name, rows, i)),
      overlay("no audio", silent, { mode: "markers", marker: { symbol: "x", size: size + 2, color: "#555" } }),
      overlay("playlist", order, { mode: "lines+markers+text", text: order.map((_, i) => String(i + 1)),
        textposition: "top right", line: { color: "#000", width: 1.5 }, marker: { size: size + 3, color: "#000" } },
      "scatter"),
      overlay("seeds", state.seeds, { mode: "markers", marker: { symbol: "star", size: 16, color: "#d62728",
        line: { color: "#000", width: 1 } } }, "scatter")];  // SVG: redrawn alone when seeds or playlist change
    return Plotly.react(plot, traces, { dragmode: plot.layout ? plot.layout.dragmode : "select",
      margin: { l: 30, r: 10, t: 10, b: 30 }, hovermode: "closest", uirevision: "keep",
      legend: { itemsizing: "constant" }, xaxis: { zeroline: false }, yaxis: { zeroline: false } },
      { displaylogo: false, responsive: true });
  }

  function overlays() {  // only the seeds and the playlist change: restyle those two traces, not the 100k points
    const order = state.playlist ? state.playlist.rows : [];
    const pick = (rows, values) => rows.map((r) => values[r]);
    return Plotly.restyle(plot, { x: [pick(order, data.x), pick(state.seeds, data.x)],
      y: [pick(order, data.y), pick(state.seeds, data.y)], customdata: [order, state.seeds],
      hovertext: [order.map(hover), state.seeds.map(hover)], text: [order.map((_, i) => String(i + 1)), []] },
    [groupCount + 1, groupCount + 2]);
  }

  function showSeeds() {
    const item = (row) => element("li", { "data-id": data.ids[row] }, data.names[row]);
    $("seeds").replaceChildren(...state.seeds.map(item));
  }
  function setSeeds(rows) { state.seeds = rows; showSeeds(); overlays(); }

  async function play(row) {
    $("now").textContent = `${data.names[row]}`;
    if (state.audio[row] !== "ok") {
      $("message").textContent = `${data.names[row]}: ${AUDIO_NOTE[state.audio[row]]}`;
      return false;
    }
    const url = await transport.audioUrl(row);
    if (!url) { markBroken(row); return false; }
    $("player").dataset.row = row;
    $("player").src = url;
    $("player").play().catch(() => {});
    return true;
  }
  function markBroken(row) {
    state.audio[row] = "broken";
    $("message").textContent = `${data.names[row]}: ${AUDIO_NOTE.broken}`;
    draw();
    if (state.queue.length) playNext();
  }
  async function playNext() {
    while (state.queue.length) if (await play(state.queue.shift())) return;
  }
  $("player").addEventListener("error", () => {
    if ($("player").dataset.row) markBroken(Number($("player").dataset.row));
  });
  $("player").addEventListener("ended", playNext);

  async function makePlaylist() {
    if (!state.seeds.length) { $("message").textContent = "pick one or more seed tracks first"; return; }
    $("message").textContent = "building the playlist…";
    const result = await transport.call("playlist", { seeds: state.seeds.map((r) => data.ids[r]),
      length: Number($("length").value), mode: $("mode").value });
    if (result.error) { $("message").textContent = result.error; return; }
    state.playlist = result;
    $("message").textContent = result.message;
    $("playlist").replaceChildren(...result.rows.map((row) => {
      const item = element("li", { "data-id": data.ids[row] }, data.names[row]);
      item.addEventListener("click", () => play(row));
      return item;
    }));
    for (const id of ["playall", "save"]) $(id).disabled = false;
    $("push").disabled = !data.spotify;
    overlays();
  }
  async function send(action) {
    const result = await transport.call(action, { ids: state.playlist.ids, name: $("name").value });
    $("message").textContent = result.error ? result.error : action === "save" ? `saved ${result.path}`
      : `${result.action}d Spotify playlist ${result.playlist_id} with ${result.n_tracks} tracks`;
  }

  $("clear").addEventListener("click", () => setSeeds([]));
  $("make").addEventListener("click", makePlaylist);
  $("playall").addEventListener("click", () => { state.queue = state.playlist.rows.slice(); playNext(); });
  $("save").addEventListener("click", () => send("save"));
  $("push").addEventListener("click", () => send("spotify"));
  $("colour").addEventListener("change", draw);
  await draw();
  const trackRow = (point) => (point.curveNumber < groupCount ? point.customdata : null);
  plot.on("plotly_click", (event) => {
    const point = event.points[0];
    const row = point && typeof point.customdata === "number" ? point.customdata : null;
    if (row === null) return;
    if (event.event && event.event.shiftKey) {
      setSeeds(state.seeds.includes(row) ? state.seeds.filter((r) => r !== row) : [...state.seeds, row]);
    } else {
      state.queue = [];
      play(row);
    }
  });
  plot.on("plotly_selected", (event) => {
    if (!event) return;
    const rows = [...new Set(event.points.map(trackRow).filter((r) => r !== null))].sort((a, b) => a - b);
    if (rows.length) setSeeds(rows);
  });
  root.dataset.ready = "true";
}

// anywidget entry point (the notebook widget, cml.playlist.widget)
export default {
  async render({ model, el }) {
    const transport = commTransport(model);
    if (!window.Plotly) {  // plotly.js comes from the kernel (the plotly package), once per page
      const script = document.createElement("script");
      script.src = await transport.plotlyUrl();
      await new Promise((resolve) => { script.onload = resolve; document.head.append(script); });
    }
    await mount(el, transport);
  },
};
