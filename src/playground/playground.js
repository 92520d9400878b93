// The edgerag playground: ask a question and watch the answer stream in with its sources, or run
// a search, against this worker's own API. The key the person types is kept in sessionStorage
// (this tab only) and sent only to this origin: every call below is a relative `/v1/...` path,
// and the page's Content-Security-Policy (`connect-src 'self'`) refuses any other.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const STORED_KEY = "edgerag.key";
  const STORED_INDEX = "edgerag.index";
  const PHASES = ["fetch", "validate", "search", "merge", "embed", "origin"];
  const PHASE_NOTES = {
    fetch: "shards from R2",
    validate: "opening shards",
    search: "HNSW search",
    merge: "top-k merge",
    embed: "query embedding",
    origin: "model, to first token",
  };

  const session = {
    get: (name) => { try { return sessionStorage.getItem(name); } catch { return null; } },
    set: (name, value) => { try { sessionStorage.setItem(name, value); } catch { /* private mode */ } },
    drop: (name) => { try { sessionStorage.removeItem(name); } catch { /* private mode */ } },
  };

  let indexMetric = null;

  /** An element with attributes (`class`, `text`, anything else as an attribute) and children. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  /** What went wrong, from the API's RFC 9457 problem document where there is one. */
  class Problem extends Error {
    constructor(status, body, headers) {
      super(body.detail || body.title || `HTTP ${status}`);
      this.status = status;
      this.title = body.title || `HTTP ${status}`;
      this.detail = body.detail || "";
      this.requestId = body.request_id || (headers && headers.get("x-request-id")) || "";
      this.retryAfter = headers ? headers.get("retry-after") : null;
    }
  }

  async function problemOf(response) {
    let body = {};
    try { body = JSON.parse(await response.text()); } catch { /* not a problem document */ }
    return new Problem(response.status, body && typeof body === "object" ? body : {}, response.headers);
  }

  function key() {
    return $("key").value.trim();
  }

  /** One call to this worker's API: a relative path, so the key never leaves this origin. */
  async function api(path, { body, signal } = {}) {
    if (!path.startsWith("/v1/")) throw new Error(`not an API path: ${path}`);
    if (!key()) throw new Problem(401, { title: "No API key", detail: "Enter an API key and connect first." });
    const headers = { authorization: `Bearer ${key()}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
    if (!response.ok) throw await problemOf(response);
    return response;
  }

  /** The sentence a person needs for each status the API answers with. */
  function explain(problem) {
    switch (problem.status) {
      case 401:
        return ["The API key was not accepted.", "Check the key and connect again."];
      case 403:
        return ["This key may not do that.", problem.detail];
      case 429: {
        const wait = problem.retryAfter ? `Try again in ${problem.retryAfter} s.` : "Try again shortly.";
        return ["This key's rate limit is used up.", wait];
      }
      case 503:
        return ["The service is unavailable right now.", `${problem.detail} Try again shortly.`];
      default:
        return [`${problem.title} (${problem.status || "network"})`, problem.detail];
    }
  }

  function showMessage(box, error, tone) {
    box.replaceChildren();
    box.classList.toggle("warn", tone === "warn");
    if (error instanceof Problem) {
      const [headline, more] = explain(error);
      box.append(el("strong", { text: headline }));
      if (more) box.append(el("span", { text: more }));
      if (error.requestId) box.append(el("span", { class: "rid mono", text: `request id ${error.requestId}` }));
    } else {
      box.append(el("strong", { text: error.message || String(error) }));
    }
    box.hidden = false;
  }

  function hideMessage(box) {
    box.hidden = true;
    box.replaceChildren();
  }

  // ---- Server-Timing -------------------------------------------------------------------------

  function parseServerTiming(header) {
    const phases = {};
    for (const part of (header || "").split(",")) {
      const [name, ...params] = part.trim().split(";");
      const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
      if (name && dur) phases[name.trim()] = Number(dur.slice(4)) || 0;
    }
    return phases;
  }

  /** A bar of the worker's phases within the time the browser waited for the response head. */
  function renderTiming(box, header, headMs, totalMs) {
    const phases = parseServerTiming(header);
    const known = PHASES.filter((name) => name in phases);
    const spent = known.reduce((sum, name) => sum + phases[name], 0);
    const other = Math.max(0, headMs - spent);
    const bar = el("div", { class: "bar", role: "img", "aria-label": "Server-Timing breakdown" });
    for (const name of known) {
      if (phases[name] <= 0) continue;
      const part = el("span", { class: `t-${name}`, title: `${name} ${phases[name].toFixed(1)} ms` });
      part.style.flexGrow = String(phases[name]);
      bar.append(part);
    }
    if (other > 0) {
      const part = el("span", { class: "t-other", title: `network and worker ${other.toFixed(1)} ms` });
      part.style.flexGrow = String(other);
      bar.append(part);
    }
    const legend = el("ul", { class: "legend" });
    for (const name of known) {
      legend.append(el("li", { class: `t-${name}`, title: PHASE_NOTES[name] },
        `${name} `, el("b", { text: `${phases[name].toFixed(1)} ms` })));
    }
    legend.append(el("li", { class: "t-other" }, "network & worker ", el("b", { text: `${other.toFixed(1)} ms` })));
    const caption = el("p", { class: "note" },
      `Server-Timing of this request: response head after ${headMs.toFixed(0)} ms`,
      totalMs === undefined ? "" : `, complete after ${totalMs.toFixed(0)} ms`, ".");
    box.replaceChildren(bar, legend, caption);
  }

  // ---- Connect and indexes -------------------------------------------------------------------

  async function connect(event) {
    if (event) event.preventDefault();
    const box = $("connect-msg");
    hideMessage(box);
    $("connect-go").disabled = true;
    try {
      const { indexes } = await (await api("/v1/indexes")).json();
      session.set(STORED_KEY, key());
      const select = $("index");
      const wanted = session.get(STORED_INDEX);
      select.replaceChildren(...indexes.map((name) => el("option", { value: name, text: name })));
      select.disabled = indexes.length === 0;
      if (indexes.length === 0) {
        select.append(el("option", { value: "", text: "no index for this key" }));
        $("index-info").textContent = "";
        return;
      }
      select.value = indexes.includes(wanted) ? wanted : indexes[0];
      await describeIndex();
    } catch (error) {
      if (error instanceof Problem && error.status === 401) session.drop(STORED_KEY);
      $("index").replaceChildren(el("option", { value: "", text: "connect first" }));
      $("index").disabled = true;
      $("index-info").textContent = "";
      showMessage(box, error);
    } finally {
      $("connect-go").disabled = false;
    }
  }

  function megabytes(bytes) {
    return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
  }

  async function describeIndex() {
    const name = $("index").value;
    if (!name) return;
    session.set(STORED_INDEX, name);
    const info = $("index-info");
    try {
      const summary = await (await api(`/v1/indexes/${encodeURIComponent(name)}`)).json();
      indexMetric = summary.metric;
      info.replaceChildren(
        el("b", { text: summary.name }), ` · version `, el("code", { text: summary.version }),
        ` · ${summary.vectors.toLocaleString()} passages in ${summary.shards} shard${summary.shards === 1 ? "" : "s"}`,
        ` · ${summary.dims} dims, ${summary.metric} · ${megabytes(summary.bytes)}`,
        ` · regions ${summary.regions.join(", ")}`);
    } catch (error) {
      info.textContent = "";
      showMessage($("connect-msg"), error);
    }
  }

  function forget() {
    session.drop(STORED_KEY);
    session.drop(STORED_INDEX);
    $("key").value = "";
    $("index").replaceChildren(el("option", { value: "", text: "connect first" }));
    $("index").disabled = true;
    $("index-info").textContent = "";
    hideMessage($("connect-msg"));
    $("key").focus();
  }

  function chosenIndex(box) {
    const name = $("index").value;
    if (!name) {
      showMessage(box, new Problem(0, { title: "No index", detail: "Connect with your key and pick an index first." }));
      return null;
    }
    return name;
  }

  // ---- Sources and matches -------------------------------------------------------------------

  /** A `source` as a link when it is a web address, else as link-like text. */
  function sourceNode(source) {
    if (/^https?:\/\//i.test(source)) {
      return el("a", { class: "source", href: source, target: "_blank", rel: "noopener noreferrer", text: source });
    }
    return el("code", { class: "source", text: source });
  }

  // A lexical or hybrid match's rank in each ranking it was in (its score is BM25 or fused, not
  // a cosine, so it gets no meter).
  function stageNodes(stages) {
    if (!stages) return [];
    return ["vector", "lexical"].filter((name) => stages[name]).map((name) =>
      el("span", { class: "chip stage", title: `${name} score ${Number(stages[name].score).toFixed(3)}`,
        text: `${name} #${stages[name].rank}` }));
  }

  /** `similarity`: the score is the metric's (a cosine gets a meter), not BM25 or fused. */
  function scoreNode(score, similarity) {
    const node = el("span", { class: "score" }, "score ", el("b", { text: Number(score).toFixed(3) }));
    if (indexMetric === "cosine" && similarity) {
      const fill = el("span");
      fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
      node.prepend(el("span", { class: "meter", "aria-hidden": "true" }, fill));
    }
    return node;
  }

  function renderSources(sources) {
    $("sources").replaceChildren(...sources.map((s) => el("li", { id: `src-${s.n}` },
      el("div", { class: "src-head" },
        el("span", { class: "src-n", text: `[${s.n}]` }),
        el("span", { class: "src-title", text: s.title || s.source })),
      el("div", { class: "src-meta" },
        sourceNode(s.source),
        // The answer's passages come from a hybrid search of the question: fused scores.
        s.score === undefined ? null : scoreNode(s.score, false),
        s.shard ? el("span", { class: "chip", text: s.shard }) : null,
        el("span", { class: "mono", text: `id ${s.id}` })))));
  }

  /** The answer with its `[n]` markers as links to the sources they cite. */
  function renderAnswer(text, sourceCount) {
    const parts = [];
    let last = 0;
    for (const m of text.matchAll(/\[(\d+)\]/g)) {
      const n = Number(m[1]);
      if (n < 1 || n > sourceCount) continue;
      parts.push(text.slice(last, m.index));
      parts.push(el("a", { class: "cite", href: `#src-${n}`, text: m[0] }));
      last = m.index + m[0].length;
    }
    parts.push(text.slice(last));
    $("answer").replaceChildren(...parts);
  }

  // ---- Ask (streamed RAG) --------------------------------------------------------------------

  /** Server-sent events from a response body, as {event, data}. */
  async function* events(body, signal) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) yield { event, data: data.join("\n") };
        }
        if (signal.aborted) break;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  let asking = null;

  function setAskState(state, label) {
    $("ask-result").dataset.state = state;
    $("ask-state").textContent = label;
    $("answer").setAttribute("aria-busy", String(state === "streaming"));
  }

  async function ask(event) {
    event.preventDefault();
    const box = $("ask-msg");
    hideMessage(box);
    const index = chosenIndex(box);
    if (!index || asking) return;
    const body = {
      index,
      query: $("question").value.trim(),
      model: $("model").value.trim(),
      k: Number($("ask-k").value),
      stream: true,
    };
    if ($("max-tokens").value) body.max_tokens = Number($("max-tokens").value);
    asking = new AbortController();
    $("ask-go").disabled = true;
    $("ask-stop").hidden = false;
    $("ask-result").hidden = false;
    $("sources").replaceChildren();
    $("ask-timing").replaceChildren();
    renderAnswer("", 0);
    setAskState("waiting", "retrieving…");
    const started = performance.now();
    let text = "";
    let sourceCount = 0;
    try {
      const response = await api("/v1/rag", { body, signal: asking.signal });
      const headMs = performance.now() - started;
      const timing = response.headers.get("server-timing");
      renderTiming($("ask-timing"), timing, headMs);
      setAskState("streaming", "streaming…");
      let firstTokenMs = null;
      for await (const { event: name, data } of events(response.body, asking.signal)) {
        if (name === "sources") {
          const { sources } = JSON.parse(data);
          sourceCount = sources.length;
          renderSources(sources);
          continue;
        }
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "the answer broke off");
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          if (firstTokenMs === null) firstTokenMs = performance.now() - started;
          text += delta.content;
          renderAnswer(text, sourceCount);
        }
      }
      const totalMs = performance.now() - started;
      renderTiming($("ask-timing"), timing, headMs, totalMs);
      if (asking.signal.aborted) {
        setAskState("stopped", "stopped");
      } else {
        const first = firstTokenMs === null ? "" : `first token ${firstTokenMs.toFixed(0)} ms · `;
        setAskState("done", `${first}done in ${(totalMs / 1000).toFixed(1)} s`);
      }
    } catch (error) {
      if (error.name === "AbortError") {
        setAskState("stopped", "stopped");
      } else {
        setAskState("error", "failed");
        if (!text) $("ask-result").hidden = true;
        showMessage(box, error);
      }
    } finally {
      asking = null;
      $("ask-go").disabled = false;
      $("ask-stop").hidden = true;
    }
  }

  // ---- Search --------------------------------------------------------------------------------

  function optionalNumber(id) {
    const value = $(id).value.trim();
    return value === "" ? undefined : Number(value);
  }

  async function search(event) {
    event.preventDefault();
    const box = $("search-msg");
    hideMessage(box);
    const index = chosenIndex(box);
    if (!index) return;
    const body = { index, text: $("query").value.trim(), mode: $("mode").value, k: Number($("search-k").value) };
    const ef = optionalNumber("ef");
    const probe = optionalNumber("probe");
    if (ef !== undefined) body.ef = ef;
    if (probe !== undefined) body.probe = probe;
    const filterText = $("filter").value.trim();
    if (filterText) {
      let filter;
      try { filter = JSON.parse(filterText); } catch { filter = null; }
      if (!filter || typeof filter !== "object" || Array.isArray(filter)) {
        showMessage(box, new Problem(0, {
          title: "The filter is not a JSON object",
          detail: 'Write the filter as an object, e.g. {"source": "tutorial/inputoutput.html"} or {"year": {"$gte": 2020}}.',
        }));
        $("filter").focus();
        return;
      }
      body.filter = filter;
    }
    $("search-go").disabled = true;
    const started = performance.now();
    try {
      const response = await api("/v1/search", { body });
      const answer = await response.json();
      const headMs = performance.now() - started;
      renderTiming($("search-timing"), response.headers.get("server-timing"), headMs);
      renderMatches(answer, response.headers.get("cache-status"));
      $("search-result").hidden = false;
    } catch (error) {
      $("search-result").hidden = true;
      showMessage(box, error);
    } finally {
      $("search-go").disabled = false;
    }
  }

  function renderMatches(answer, cacheStatus) {
    const summary = $("search-summary");
    summary.replaceChildren(
      el("b", { text: `${answer.matches.length} match${answer.matches.length === 1 ? "" : "es"}` }),
      ` from ${answer.index} version `, el("code", { text: answer.version }));
    if (cacheStatus) summary.append(" · ", el("code", { text: cacheStatus }));
    if (answer.partial) {
      showMessage($("search-msg"), new Error(
        `Partial answer: shard${answer.failed_shards.length === 1 ? "" : "s"} ${answer.failed_shards.join(", ")} did not answer in time.`), "warn");
    }
    $("matches").replaceChildren(...answer.matches.map((m, i) => {
      const metadata = m.metadata || {};
      const source = typeof metadata.source === "string" ? metadata.source : null;
      const narrow = source ? el("button", { type: "button", class: "linkish", text: "filter by this source" }) : null;
      if (narrow) {
        narrow.addEventListener("click", () => {
          $("filter").value = JSON.stringify({ source });
          $("search-form").requestSubmit();
        });
      }
      return el("li", {},
        el("div", { class: "src-head" },
          el("span", { class: "src-n", text: `#${i + 1}` }),
          el("span", { class: "src-title", text: metadata.title || source || `id ${m.id}` })),
        el("div", { class: "src-meta" },
          source ? sourceNode(source) : null,
          scoreNode(m.score, !m.stages),
          ...stageNodes(m.stages),
          el("span", { class: "chip", text: m.shard }),
          el("span", { class: "mono", text: `id ${m.id}` }),
          narrow),
        el("p", { class: "passage", text: m.text }),
        el("details", {}, el("summary", { text: "metadata" }), el("pre", { class: "mono", text: JSON.stringify(metadata, null, 2) })));
    }));
  }

  // ---- Tabs and keyboard ---------------------------------------------------------------------

  function selectTab(tab, focus) {
    for (const other of document.querySelectorAll('[role="tab"]')) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
  }

  function tabKeys(event) {
    const tabs = [...document.querySelectorAll('[role="tab"]')];
    const at = tabs.indexOf(document.activeElement);
    if (at < 0) return;
    const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    selectTab(tabs[(to + tabs.length) % tabs.length], true);
  }

  function start() {
    $("connect").addEventListener("submit", connect);
    $("forget").addEventListener("click", forget);
    $("index").addEventListener("change", describeIndex);
    $("ask-form").addEventListener("submit", ask);
    $("ask-stop").addEventListener("click", () => asking && asking.abort());
    $("search-form").addEventListener("submit", search);
    $("question").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        $("ask-form").requestSubmit();
      }
    });
    for (const tab of document.querySelectorAll('[role="tab"]')) {
      tab.addEventListener("click", () => selectTab(tab, false));
    }
    document.querySelector('[role="tablist"]').addEventListener("keydown", tabKeys);
    const stored = session.get(STORED_KEY);
    if (stored) {
      $("key").value = stored;
      connect();
    } else {
      $("key").focus();
    }
  }

  start();
})();
