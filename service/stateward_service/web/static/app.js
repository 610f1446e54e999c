// The Stateward web view: a list of flow runs and a page per run, kept live by one event
// stream per tab. Plain JavaScript, no build step, no request to any other site.
//
// Consistency: every listing comes with `sequence`, the newest transition it may not reflect.
// A view ignores the transitions up to its snapshot's sequence and applies the later ones, and
// transitions that arrive while a snapshot loads wait for it. The stream resumes after the
// last transition received (Last-Event-ID), so nothing is missed across reconnections.
"use strict";

const STATE_TYPES = [
  "SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING",
  "COMPLETED", "FAILED", "CANCELLED", "CRASHED",
];
const FINAL_TYPES = new Set(["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]);
const PAGE_SIZE = 50;
const KEY_STORAGE = "stateward-api-key";

// --- small helpers ---------------------------------------------------------------------------

function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

// Whether the state's result is an exception, shown by the state's message (so the message is
// not shown twice).
function shownAsResult(state) {
  return Boolean(state && state.result && state.result.kind === "exception");
}

// Replace an element's children (arrays flattened, null and false skipped, as in h()).
function put(element, ...children) {
  element.replaceChildren();
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function showTime(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const moment = new Date(iso);
  return h("time", { datetime: iso, title: iso }, timeFormat.format(moment));
}

// A log line's time, to the millisecond (as `stateward flow-run logs` prints it).
const logTimeFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3,
});

function showDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

// A run's duration: from its start to its end, or to now while it has not ended.
function runSeconds(run) {
  if (!run.start_time) return null;
  const end = run.end_time ? new Date(run.end_time) : new Date();
  return Math.max(0, (end - new Date(run.start_time)) / 1000);
}

function badge(state) {
  if (!state) return h("span", { class: "state state-NONE" }, "no state");
  return h("span", { class: `state state-${state.type}`, title: state.type }, state.name);
}

function tags(list) {
  return list.length ? list.map((tag) => h("span", { class: "tag" }, tag)) : h("span", { class: "muted" }, "—");
}

// One state of a history: its name (coloured by type), type, time and message.
function historyItem(state) {
  return h("li", { dataset: { type: state.type } },
    badge(state), h("span", { class: "type" }, state.type.toLowerCase()),
    h("span", { class: "when" }, showTime(state.timestamp)),
    state.message ? h("span", { class: "message" }, state.message) : null);
}

// --- the input a pause waits for -------------------------------------------------------------

// A JSON Schema's type in words: "string", "integer or null", "array of string", a $ref's name.
function schemaType(schema) {
  if (!schema || typeof schema !== "object") return "any";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.enum) return `one of ${schema.enum.map((value) => JSON.stringify(value)).join(", ")}`;
  if ("const" in schema) return JSON.stringify(schema.const);
  const choices = schema.anyOf || schema.oneOf || schema.allOf;
  if (choices) return choices.map(schemaType).join(schema.allOf ? " and " : " or ");
  return [].concat(schema.type || "any")
    .map((type) => (type === "array" && schema.items ? `array of ${schemaType(schema.items)}` : type))
    .join(" or ");
}

// The input box's first text: each field's default; a required field without one is left for
// the user to type (a value filled in for it, such as null, would be sent as given).
function inputTemplate(schema) {
  if (!schema.properties) return schema.default === undefined ? "" : JSON.stringify(schema.default, null, 2);
  const template = {};
  for (const [name, field] of Object.entries(schema.properties)) {
    if (field && typeof field === "object" && "default" in field) template[name] = field.default;
  }
  return JSON.stringify(template, null, 2);
}

// What the user must type: the required fields without a default, or a value of the type.
function inputRequired(schema) {
  if (!schema.properties) return schema.default === undefined ? `Required: a value (${schemaType(schema)}).` : null;
  const missing = (schema.required || []).filter((name) => {
    const field = schema.properties[name];
    return !(field && typeof field === "object" && "default" in field);
  });
  return missing.length ? `Required, with no default: ${missing.join(", ")}. Add ${missing.length > 1 ? "them" : "it"} to the input.` : null;
}

// The stored result of a run's state: JSON shown, a pickle named; a failed run's exception by
// the state's message, which the SDK writes as "Type: message" (the server never unpickles).
function resultSection(state) {
  if (!state || !state.result) return null;
  const result = state.result;
  const bytes = `${result.bytes ? result.bytes.toLocaleString() : 0} bytes`;
  if (shownAsResult(state)) {
    // The pickle is for Python; the state's message names the exception (type: message).
    return [h("h2", {}, "Exception"),
      h("pre", { class: "json exception", id: "result" }, result.message),
      h("p", { class: "muted" }, `Stored pickled (${bytes}): Python can raise it again with state.result(), given the code that made it.`)];
  }
  const body = result.kind === "json"
    ? h("pre", { class: "json", id: "result" }, JSON.stringify(result.value, null, 2))
    : h("p", { class: "notice", id: "result" },
      `A pickled Python object (${bytes}): only Python can read it, with the code that made it.`);
  return [h("h2", {}, "Result"), body];
}

function historyList(states) {
  return h("ol", { class: "history", id: "history", "aria-labelledby": "history-title" },
    states.map((state) => historyItem(state)));
}

// The facts every run has: its message (unless shown as its exception), times, counts, tags
// and parameters.
function runFacts(run) {
  return [
    run.state && run.state.message && !shownAsResult(run.state) ? [h("dt", {}, "Message"), h("dd", { id: "run-message" }, run.state.message)] : null,
    h("dt", {}, "Created"), h("dd", {}, showTime(run.created)),
    h("dt", {}, "Started"), h("dd", {}, showTime(run.start_time)),
    h("dt", {}, "Ended"), h("dd", {}, showTime(run.end_time)),
    h("dt", {}, "Duration"), h("dd", { id: "run-duration" }, showDuration(runSeconds(run))),
    h("dt", {}, "Run time"), h("dd", {}, showDuration(run.total_run_time)),
    h("dt", {}, "Run count"), h("dd", {}, String(run.run_count)),
    h("dt", {}, "Tags"), h("dd", {}, tags(run.tags)),
    h("dt", {}, "Parameters"), h("dd", {}, h("pre", { class: "json" }, JSON.stringify(run.parameters, null, 2)))];
}

// --- a run's logs ----------------------------------------------------------------------------

const LOG_LINES = 200; // lines fetched at a time (the API gives at most 1000)
const LOG_KEEP = 1000; // lines kept on the page as new ones arrive (older ones on request)
const LOG_KEEP_READING = 5000; // kept while the newest are out of view (a user reads older ones)
const LOG_POLL_MS = 2000; // how often a run that has not ended is asked for new lines
const LOG_QUIET_POLLS = 3; // polls without a new line after the run ended before stopping

// A run's log lines (`base`: its API path), newest at the bottom and in view. Lines are its
// code's untrusted text: they go into the page as text nodes only. The event stream carries
// state changes, not lines: while the run has not ended (and a few seconds after), the panel
// asks for the lines after the last one it has.
class LogPanel {
  constructor(base) {
    this.base = base;
    this.first = null; // the oldest line's id shown
    this.last = null; // the newest line's id shown
    this.count = 0;
    this.quiet = 0;
    this.timer = null;
    this.closed = false;
    this.loaded = false;
    this.queue = Promise.resolve(); // the panel's requests, one at a time (see `serial`)
    this.body = h("tbody", { id: "log-lines" });
    this.earlierButton = h("button", { type: "button", id: "log-earlier", hidden: true, onclick: () => this.serial(() => this.earlier()).catch((error) => this.failed(error)) }, "Show earlier lines");
    this.status = h("p", { class: "muted", id: "log-status" }, "Loading…");
    this.box = h("div", { class: "logs", id: "logs", tabindex: "0", "aria-labelledby": "logs-title" },
      this.earlierButton,
      h("table", { class: "log-table" },
        h("thead", {}, h("tr", {}, ["Time", "Level", "Logger", "Message"].map((title) => h("th", { scope: "col" }, title)))),
        this.body));
    this.element = h("section", { "aria-labelledby": "logs-title" },
      h("h2", { id: "logs-title" }, "Logs"), this.status, this.box);
  }

  row(line) {
    return h("tr", { dataset: { logId: line.id, level: line.level_name } },
      h("td", { class: "log-time" }, h("time", { datetime: line.timestamp, title: line.timestamp }, logTimeFormat.format(new Date(line.timestamp)))),
      h("td", { class: `log-level level-${line.level >= 40 ? "error" : line.level >= 30 ? "warning" : "info"}` }, line.level_name),
      h("td", { class: "log-logger" }, line.logger),
      h("td", { class: "log-message" }, line.message));
  }

  atBottom() {
    return !this.box.isConnected || this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 8;
  }

  // Scroll to the newest line, now or once the panel is on the page (see `watch`).
  toEnd() {
    this.endPending = !this.box.isConnected;
    this.box.scrollTop = this.box.scrollHeight;
  }

  showStatus() {
    this.status.textContent = this.count ? "" : "No lines logged yet.";
    this.status.hidden = Boolean(this.count);
    this.box.hidden = !this.count;
  }

  // Bring the panel up to date: its newest lines the first time, then the lines after them;
  // true if lines came.
  update() {
    return this.serial(() => (this.loaded ? this.follow() : this.load()));
  }

  // Run `work` after the panel's other requests: a poll and a page's reload after a transition
  // may ask at once, and two requests after the same line would show its successors twice.
  serial(work) {
    const done = this.queue.then(work);
    this.queue = done.catch(() => {});
    return done;
  }

  async load() {
    const page = await api(`${this.base}/logs?limit=${LOG_LINES}`);
    if (this.closed) return false;
    this.loaded = true;
    this.body.replaceChildren(...page.logs.map((line) => this.row(line)));
    this.count = page.logs.length;
    this.first = this.count ? page.logs[0].id : null;
    this.last = this.count ? page.logs[this.count - 1].id : null;
    this.earlierButton.hidden = !page.more;
    this.showStatus();
    this.toEnd();
    return this.count > 0;
  }

  // The lines after the newest shown; true if there were any. More than LOG_KEEP new lines at
  // once (a burst): the newest LOG_LINES instead, the others on request.
  async follow() {
    if (this.last === null) return this.load();
    const page = await api(`${this.base}/logs?after=${this.last}&limit=${LOG_KEEP}`);
    if (this.closed) return false;
    if (!page.logs.length) {
      this.showStatus(); // no longer "Could not read the lines"
      return false;
    }
    if (page.more) return this.load();
    const stick = this.atBottom();
    this.body.append(...page.logs.map((line) => this.row(line)));
    this.count += page.logs.length;
    this.last = page.logs[page.logs.length - 1].id;
    const keep = stick ? LOG_KEEP : LOG_KEEP_READING;
    if (this.count > keep) {
      // Keep the page light: drop the oldest lines, which "Show earlier lines" brings back
      // (not those a user scrolled up to read, unless the run goes on logging for long).
      const rows = [...this.body.children].slice(0, this.count - keep);
      for (const row of rows) row.remove();
      this.count = keep;
      this.first = Number(this.body.firstElementChild.dataset.logId);
      this.earlierButton.hidden = false;
    }
    this.showStatus();
    if (stick) this.toEnd();
    return true;
  }

  failed(error) {
    this.status.hidden = false;
    this.status.textContent = `Could not read the lines: ${error.message}`;
  }

  async earlier() {
    const page = await api(`${this.base}/logs?before=${this.first}&limit=${LOG_LINES}`);
    if (this.closed || !page.logs.length) return;
    const height = this.box.scrollHeight;
    this.body.prepend(...page.logs.map((line) => this.row(line)));
    this.count += page.logs.length;
    this.first = page.logs[0].id;
    this.earlierButton.hidden = !page.more;
    this.box.scrollTop += this.box.scrollHeight - height; // the lines read stay in place
  }

  // Once on the page: ask for new lines every LOG_POLL_MS until the run has ended and a few
  // polls brought none.
  watch(ended) {
    if (this.endPending) this.toEnd();
    this.ended = ended;
    if (!ended) this.quiet = 0;
    if (this.timer || this.closed) return;
    const poll = async () => {
      let found = false;
      try {
        found = await this.update();
      } catch (error) {
        // Offline or restarting: the next poll tries again.
      }
      this.quiet = found ? 0 : this.quiet + 1;
      this.timer = !this.closed && (!this.ended || this.quiet < LOG_QUIET_POLLS) ? setTimeout(poll, LOG_POLL_MS) : null;
    };
    this.timer = setTimeout(poll, LOG_POLL_MS);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
  }
}

// A run's page: its content (rendered again as it changes) and, below, its log panel, put on the
// page once so that its lines and scroll position stay.
function attach(main, content, logs) {
  if (!content.isConnected) put(main, content, logs.element);
}

// --- the API ---------------------------------------------------------------------------------

// How long a list waits before it asks again for runs it could not fetch.
const REFRESH_RETRY_MS = 1000;

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
let keyPrompt = null; // the pending "ask for the key" promise, shared by every caller

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
  });
  if (response.status === 401) {
    await askForKey(apiKey ? "That key was refused." : "");
    return api(path, options);
  }
  const body = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(body.error || response.statusText, response.status);
  return body;
}

// Ask for the key until one works; the server then sets the event stream's cookie.
function askForKey(problem) {
  if (keyPrompt) return keyPrompt;
  keyPrompt = new Promise((resolve) => {
    const dialog = document.getElementById("key-dialog");
    const form = document.getElementById("key-form");
    const input = document.getElementById("key-input");
    const error = document.getElementById("key-error");
    error.textContent = problem;
    const submit = async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      const answer = await fetch("/api/session", {
        method: "POST",
        headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
        body: "{}",
      });
      if (answer.ok) {
        apiKey = key;
        sessionStorage.setItem(KEY_STORAGE, key);
        form.removeEventListener("submit", submit);
        dialog.close();
        keyPrompt = null;
        resolve();
        stream.restart();
      } else {
        error.textContent = "That key was refused.";
        input.select();
      }
    };
    form.addEventListener("submit", submit);
    dialog.addEventListener("cancel", (event) => event.preventDefault());
    dialog.showModal();
    input.focus();
  });
  return keyPrompt;
}

// --- the event stream ------------------------------------------------------------------------

const stream = {
  source: null,
  last: null, // the sequence of the last transition received
  retryTimer: null,
  listeners: new Set(),

  // Open once: the first snapshot gives the cursor; later views share the stream.
  ensure(sequence) {
    if (this.source || this.retryTimer) return;
    if (this.last === null) this.last = sequence;
    this.open();
  },

  open() {
    this.retryTimer = null;
    if (this.source) this.source.close();
    const query = this.last === null ? "" : `?after=${this.last}`;
    const source = new EventSource(`/api/events${query}`);
    this.source = source;
    source.addEventListener("hello", (event) => {
      const hello = JSON.parse(event.data);
      this.last = hello.sequence;
      setLive("live", "live");
      if (hello.reset) {
        // The cursor could not be resumed (another database, or pruned): reload the view.
        console.warn("stateward: event stream restarted:", hello.reset);
        router.reload();
      }
    });
    source.addEventListener("transition", (event) => {
      const transition = JSON.parse(event.data);
      if (this.last !== null && transition.sequence <= this.last) return; // already seen
      this.last = transition.sequence;
      for (const listener of this.listeners) listener(transition);
    });
    source.addEventListener("error", () => {
      setLive("reconnecting", "reconnecting…");
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error, e.g. a proxy's): try again after a pause.
        this.source = null;
        this.retryTimer = setTimeout(() => this.open(), 2000);
      }
    });
  },

  restart() {
    if (this.source || this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.open();
    }
  },
};

function setLive(status, text) {
  const live = document.getElementById("live");
  live.dataset.status = status;
  live.textContent = text;
}

// A view's consistency with the stream: transitions up to its snapshot are in the snapshot,
// later ones are applied, and those arriving while a snapshot loads wait for it.
class LiveView {
  constructor() {
    this.since = Infinity; // nothing applies before the first snapshot
    this.loading = 0;
    this.waiting = [];
    this.onTransition = (transition) => this.receive(transition);
    stream.listeners.add(this.onTransition);
  }

  receive(transition) {
    if (this.loading) this.waiting.push(transition);
    else if (transition.sequence > this.since) this.apply(transition);
  }

  // A page shown by its `load` (the list of runs shows itself its own way); reloaded after a
  // transition it cannot apply, one reload at a time: changes during one bring one more.
  async show() {
    await this.reload();
  }

  async reload() {
    if (this.reloading) {
      this.again = true;
      return;
    }
    this.reloading = true;
    try {
      await this.load();
    } finally {
      this.reloading = false;
    }
    if (this.again && !this.closed) {
      this.again = false;
      await this.reload();
    }
  }

  async snapshot(load) {
    this.loading += 1;
    try {
      const sequence = await load();
      this.since = sequence;
      stream.ensure(sequence);
    } finally {
      this.loading -= 1;
    }
    if (!this.loading) {
      const waiting = this.waiting;
      this.waiting = [];
      for (const transition of waiting) this.receive(transition);
    }
  }

  close() {
    stream.listeners.delete(this.onTransition);
  }
}

// --- the runs list ---------------------------------------------------------------------------

function filtersFromHash(query) {
  const params = new URLSearchParams(query);
  return {
    flow: params.get("flow") || "",
    state: params.get("state") || "",
    tag: params.get("tag") || "",
    since: params.get("since") || "",
    until: params.get("until") || "",
  };
}

// The API's query string for the filters (`flow` and `tag` take several, comma-separated).
function filterQuery(filters) {
  const params = new URLSearchParams();
  for (const name of ["flow", "tag"]) {
    for (const value of filters[name].split(",")) if (value.trim()) params.append(name, value.trim());
  }
  if (filters.state) params.append("state", filters.state);
  for (const name of ["since", "until"]) if (filters[name]) params.append(name, filters[name]);
  return params;
}

// datetime-local inputs speak local time without a zone; the API wants UTC.
function toUtc(local) {
  return local ? new Date(local).toISOString() : "";
}

function toLocalInput(iso) {
  if (!iso) return "";
  const moment = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${moment.getFullYear()}-${pad(moment.getMonth() + 1)}-${pad(moment.getDate())}T${pad(moment.getHours())}:${pad(moment.getMinutes())}`;
}

class RunsList extends LiveView {
  constructor(main, query) {
    super();
    this.main = main;
    this.filters = filtersFromHash(query);
    this.rows = new Map(); // run id -> {run, row}
    this.nextToken = "";
    this.changed = new Set(); // runs to fetch again
    this.refreshTimer = null;
    this.flowNames = new Set();
  }

  async show() {
    put(this.main, this.filterForm(), h("p", { class: "summary", id: "summary" }, "Loading…"),
      this.table(), h("div", { class: "more" }, this.moreButton()));
    await this.snapshot(async () => {
      const page = await api(`/api/flow-runs?${this.query()}`);
      this.rows.clear();
      put(this.body);
      this.addPage(page);
      return page.sequence;
    });
  }

  query(extra = {}) {
    const params = filterQuery(this.filters);
    params.set("page_size", String(PAGE_SIZE));
    for (const [name, value] of Object.entries(extra)) params.append(name, value);
    return params.toString();
  }

  filterForm() {
    const f = this.filters;
    const stateSelect = h("select", { id: "filter-state", name: "state" },
      h("option", { value: "" }, "any state"),
      STATE_TYPES.map((type) => h("option", { value: type, selected: f.state === type }, type.toLowerCase())));
    this.flowList = h("datalist", { id: "flow-names" });
    const form = h("form", { class: "filters", role: "search", "aria-label": "Filter the runs" },
      h("label", { for: "filter-flow" }, "Flow",
        h("input", { id: "filter-flow", name: "flow", value: f.flow, list: "flow-names", placeholder: "any flow", autocomplete: "off" })),
      this.flowList,
      h("label", { for: "filter-state" }, "State", stateSelect),
      h("label", { for: "filter-tag" }, "Tag",
        h("input", { id: "filter-tag", name: "tag", value: f.tag, placeholder: "any tag", autocomplete: "off" })),
      h("label", { for: "filter-since" }, "Created from",
        h("input", { id: "filter-since", name: "since", type: "datetime-local", value: toLocalInput(f.since) })),
      h("label", { for: "filter-until" }, "Created before",
        h("input", { id: "filter-until", name: "until", type: "datetime-local", value: toLocalInput(f.until) })),
      h("div", { class: "buttons" },
        h("button", { type: "submit", class: "primary" }, "Filter"),
        h("button", { type: "button", onclick: () => { location.hash = "#/"; } }, "Clear")));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const params = new URLSearchParams();
      for (const name of ["flow", "state", "tag"]) if (data.get(name)) params.set(name, data.get(name));
      for (const name of ["since", "until"]) if (data.get(name)) params.set(name, toUtc(data.get(name)));
      location.hash = `#/?${params}`;
    });
    return form;
  }

  table() {
    this.body = h("tbody", { id: "runs" });
    return h("table", { class: "cards runs", "aria-describedby": "summary" },
      h("thead", {}, h("tr", {},
        ["State", "Name", "Flow", "Start", "Duration", "Tags"].map((title) => h("th", { scope: "col" }, title)))),
      this.body);
  }

  moreButton() {
    this.more = h("button", { type: "button", id: "more", hidden: true, onclick: () => this.loadMore() }, "Load more");
    return this.more;
  }

  async loadMore() {
    this.more.disabled = true;
    try {
      const page = await api(`/api/flow-runs?${this.query({ page_token: this.nextToken })}`);
      this.addPage(page);
    } finally {
      this.more.disabled = false;
    }
  }

  addPage(page) {
    for (const run of page.flow_runs) {
      if (!this.rows.has(run.id)) this.body.append(this.makeRow(run));
    }
    this.nextToken = page.next_page_token;
    this.more.hidden = !this.nextToken;
    this.updateSummary();
  }

  updateSummary() {
    const count = this.rows.size;
    const summary = document.getElementById("summary");
    if (summary) {
      summary.textContent = count === 0 ? "No flow runs match." :
        `${count} flow run${count === 1 ? "" : "s"}${this.nextToken ? " shown, more below" : ""}, newest first.`;
    }
  }

  makeRow(run) {
    const row = h("tr", { dataset: { runId: run.id } });
    this.fillRow(row, run);
    this.rows.set(run.id, { run, row });
    if (run.flow_name && !this.flowNames.has(run.flow_name)) {
      this.flowNames.add(run.flow_name);
      this.flowList.append(h("option", { value: run.flow_name }));
    }
    return row;
  }

  fillRow(row, run) {
    row.dataset.state = run.state ? run.state.type : "";
    put(row,
      h("td", { "data-label": "State", class: "cell-state" }, badge(run.state)),
      h("td", { "data-label": "Name" }, h("a", { href: `#/runs/${run.id}` }, run.name)),
      h("td", { "data-label": "Flow" }, run.flow_name),
      h("td", { "data-label": "Start" }, showTime(run.start_time)),
      h("td", { "data-label": "Duration", class: "num duration" }, showDuration(runSeconds(run))),
      h("td", { "data-label": "Tags" }, tags(run.tags)));
  }

  apply(transition) {
    if (transition.run_kind !== "flow_run") return;
    const known = this.rows.get(transition.run_id);
    if (known) {
      // Show the new state at once; the rest of the row (times, duration) follows.
      known.run.state = transition.to_state;
      known.row.dataset.state = transition.to_state.type;
      put(known.row.querySelector(".cell-state"), badge(transition.to_state));
    }
    this.refreshRun(transition.run_id);
  }

  // Fetch the runs that changed, in one request with the list's filters: each is updated,
  // added (a new run that matches) or removed (it no longer matches). A run older than the
  // pages loaded is left for "Load more".
  refreshRun(runId) {
    this.changed.add(runId);
    this.scheduleRefresh(50);
  }

  scheduleRefresh(delay) {
    if (this.refreshTimer) return;
    this.refreshTimer = setTimeout(() => this.refresh(), delay);
  }

  async refresh() {
    this.refreshTimer = null;
    const ids = [...this.changed];
    this.changed.clear();
    const params = new URLSearchParams(this.query());
    for (const id of ids) params.append("id", id);
    params.set("page_size", String(ids.length));
    let page;
    try {
      page = await api(`/api/flow-runs?${params}`);
    } catch (error) {
      if (!this.closed && (!(error instanceof ApiError) || error.status >= 500)) {
        // Not reached (offline, or the server restarting): ask again shortly, or these
        // changes would be missed until the page is reloaded.
        for (const id of ids) this.changed.add(id);
        this.scheduleRefresh(REFRESH_RETRY_MS);
      }
      return;
    }
    if (this.closed) return;
    const found = new Map(page.flow_runs.map((run) => [run.id, run]));
    for (const id of ids) {
      const run = found.get(id);
      const known = this.rows.get(id);
      if (!run) {
        if (known) {
          known.row.remove();
          this.rows.delete(id);
        }
      } else if (known) {
        known.run = run;
        this.fillRow(known.row, run);
      } else {
        this.insert(run);
      }
    }
    this.updateSummary();
  }

  insert(run) {
    // Newest first: before the first row created earlier than this one.
    let before = null;
    for (const { run: other, row } of this.rows.values()) {
      if (other.created < run.created && (!before || other.created > before.run.created)) before = { run: other, row };
    }
    if (!before && this.nextToken) return; // older than everything loaded: on a later page
    const row = this.makeRow(run);
    row.classList.add("fresh");
    if (before) this.body.insertBefore(row, before.row);
    else this.body.append(row);
    this.updateSummary();
  }

  tick() {
    for (const { run, row } of this.rows.values()) {
      if (run.start_time && !run.end_time) row.querySelector(".duration").textContent = showDuration(runSeconds(run));
    }
  }

  close() {
    super.close();
    this.closed = true;
    clearTimeout(this.refreshTimer);
  }
}

// --- a run's page ----------------------------------------------------------------------------

// What a flow run's page and a task run's page share: the run (`this.run`, as last rendered),
// its log panel (the API's `path` for runs of its kind), its state badge and history kept up
// with its transitions, a reload soon after each, and its running time.
class RunPage extends LiveView {
  constructor(main, runId, path) {
    super();
    this.main = main;
    this.runId = runId;
    this.timer = null;
    this.logs = new LogPanel(`${path}/${runId}`);
    this.content = h("div", { id: "run-content" });
  }

  // The run's own state, at once; the page follows with its times and history.
  showState(transition) {
    const holder = document.getElementById("run-state");
    if (holder) put(holder, badge(transition.to_state));
    const history = document.getElementById("history");
    if (history) history.append(historyItem(transition.to_state));
  }

  reloadSoon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.reload().catch(showError), 100);
  }

  tick() {
    const holder = document.getElementById("run-duration");
    if (holder && this.run && this.run.start_time && !this.run.end_time) holder.textContent = showDuration(runSeconds(this.run));
  }

  close() {
    super.close();
    this.closed = true;
    clearTimeout(this.timer);
    this.logs.close();
  }
}

class RunDetail extends RunPage {
  constructor(main, runId) {
    super(main, runId, "/api/flow-runs");
  }

  async load() {
    await this.snapshot(async () => {
      const [detail, taskRuns] = await Promise.all([
        api(`/api/flow-runs/${this.runId}`),
        this.loadTaskRuns(),
        this.logs.update().catch((error) => this.logs.failed(error)),
      ]);
      if (!this.closed) this.render(detail, taskRuns.runs);
      return Math.min(detail.sequence, taskRuns.sequence);
    });
  }

  async loadTaskRuns() {
    const runs = [];
    let token = "";
    let sequence = Infinity;
    do {
      const params = new URLSearchParams({ flow_run_id: this.runId, page_size: "1000" });
      if (token) params.set("page_token", token);
      const page = await api(`/api/task-runs?${params}`);
      sequence = Math.min(sequence, page.sequence);
      runs.push(...page.task_runs);
      token = page.next_page_token;
    } while (token && runs.length < 5000);
    runs.reverse(); // oldest first
    return { runs, sequence };
  }

  render(detail, taskRuns) {
    const run = detail.flow_run;
    this.run = run;
    document.title = `${run.name} · Stateward`;
    const type = run.state ? run.state.type : "";
    const focused = document.activeElement && document.activeElement.id;
    attach(this.main, this.content, this.logs);
    put(this.content,
      h("p", { class: "crumbs" }, h("a", { href: "#/", id: "back" }, "← All flow runs")),
      h("div", { class: "head" },
        h("h1", { id: "run-name" }, run.name),
        h("span", { id: "run-state" }, badge(run.state)),
        h("div", { class: "actions" },
          h("button", { type: "button", id: "resume", class: "primary", hidden: type !== "PAUSED", onclick: () => this.act("resume") }, "Resume"),
          h("button", { type: "button", id: "cancel", class: "danger", hidden: FINAL_TYPES.has(type), disabled: type === "CANCELLING", onclick: () => this.act("cancel") }, "Cancel run"))),
      h("p", { id: "action-message", role: "status", class: "muted" }),
      this.runInput(run.state),
      h("dl", { class: "facts" },
        h("dt", {}, "Flow"), h("dd", {}, run.flow_name),
        h("dt", {}, "Id"), h("dd", { class: "mono" }, run.id),
        run.parent_task_run_id ? [h("dt", {}, "Subflow of"), h("dd", { id: "parent-run" }, this.parentLink(run))] : null,
        type === "PAUSED" ? [h("dt", {}, "Paused until"), h("dd", { id: "pause-timeout" }, showTime(run.state.pause_timeout), ` (key ${JSON.stringify(run.state.pause_key)})`)] : null,
        runFacts(run)),
      resultSection(run.state),
      h("h2", { id: "history-title" }, "State history"),
      historyList(detail.states),
      h("h2", { id: "tasks-title" }, `Task runs and subflows (${taskRuns.length})`),
      taskRuns.length ? [this.gantt(run, taskRuns), this.taskTable(taskRuns)] : h("p", { class: "muted" }, "No task runs yet."));
    this.logs.watch(FINAL_TYPES.has(type));
    if (focused) {
      const again = document.getElementById(focused);
      if (again) again.focus();
    }
  }

  // The flow run this subflow ran in and the task run standing for it there, linked.
  parentLink(run) {
    const parent = run.parent_flow_run;
    return [
      parent ? [h("a", { href: `#/runs/${parent.id}`, id: "parent-flow-run" }, parent.name), ` (${parent.flow_name}), `] : null,
      "task run ", h("a", { href: `#/task-runs/${run.parent_task_run_id}`, class: "mono", id: "parent-task-run" }, run.parent_task_run_id)];
  }

  // What a pause that waits for input wants (the schema's description, its fields) and the box
  // whose JSON Resume gives as `run_input`. What is typed survives the page's reloads while the
  // run stays in that pause.
  runInput(state) {
    if (!state || state.type !== "PAUSED" || !state.run_input_schema) {
      this.draft = null;
      return null;
    }
    const schema = state.run_input_schema;
    if (!this.draft || this.draft.stateId !== state.id) this.draft = { stateId: state.id, text: inputTemplate(schema) };
    const draft = this.draft;
    const required = new Set(schema.required || []);
    const fields = Object.entries(schema.properties || {}).map(([name, field]) => {
      const known = field && typeof field === "object" ? field : {};
      const shownDefault = "default" in known ? JSON.stringify(known.default) : required.has(name) ? "required" : "—";
      return h("tr", {},
        h("td", { "data-label": "Field", class: "mono" }, name),
        h("td", { "data-label": "Type" }, schemaType(known)),
        h("td", { "data-label": "Default" }, shownDefault),
        h("td", { "data-label": "About" }, known.description || ""));
    });
    return h("section", { id: "run-input-wanted", "aria-labelledby": "run-input-title" },
      h("h2", { id: "run-input-title" }, schema.title ? `Input the pause waits for: ${schema.title}` : "Input the pause waits for"),
      schema.description ? h("p", {}, schema.description) : null,
      fields.length ? h("table", { class: "cards", id: "run-input-fields" },
        h("thead", {}, h("tr", {}, ["Field", "Type", "Default", "About"].map((title) => h("th", { scope: "col" }, title)))),
        h("tbody", {}, fields)) : h("p", {}, `Type: ${schemaType(schema)}`),
      h("label", { for: "run-input", class: "input-label" }, "Input (JSON)"),
      inputRequired(schema) ? h("p", { id: "run-input-required" }, inputRequired(schema)) : null,
      h("textarea", { id: "run-input", class: "json", rows: Math.min(draft.text.split("\n").length + 1, 16), spellcheck: "false", oninput: (event) => { draft.text = event.target.value; } }, draft.text),
      h("p", { class: "muted" }, "Resume gives this input to the flow; the pause checks it against its schema."));
  }

  // When each task run ran, on one time axis: from the first start to the last end (or now).
  gantt(run, taskRuns) {
    const times = [];
    for (const task of [run, ...taskRuns]) {
      if (task.start_time) times.push(new Date(task.start_time).getTime());
      if (task.end_time) times.push(new Date(task.end_time).getTime());
    }
    const now = Date.now();
    const start = times.length ? Math.min(...times) : now;
    const end = Math.max(run.end_time ? Math.max(...times) : now, start + 1);
    const rows = taskRuns.slice(0, 200).map((task) => {
      const bar = h("span", { class: `gantt-bar state-${task.state ? task.state.type : "NONE"}`, title: `${task.name}: ${task.state ? task.state.name : "no state"}` });
      if (task.start_time) {
        const from = new Date(task.start_time).getTime();
        const to = task.end_time ? new Date(task.end_time).getTime() : now;
        bar.style.left = `${((from - start) / (end - start)) * 100}%`;
        bar.style.width = `${Math.max(((to - from) / (end - start)) * 100, 0.3)}%`;
      } else {
        bar.style.left = "0";
        bar.style.width = "0.3%";
      }
      return h("div", { class: "gantt-row" },
        h("span", { class: "gantt-label", title: `${task.task_key}: ${task.name}` }, task.task_key),
        h("span", { class: "gantt-track" }, bar));
    });
    return h("figure", { class: "gantt", id: "gantt", "aria-label": "When each task run ran" },
      rows,
      h("div", { class: "gantt-axis" },
        h("span", {}, timeFormat.format(new Date(start))),
        h("span", {}, showDuration((end - start) / 1000))));
  }

  taskTable(taskRuns) {
    return h("table", { class: "cards", id: "task-runs", "aria-labelledby": "tasks-title" },
      h("thead", {}, h("tr", {}, ["State", "Task run", "Task", "Start", "Duration", "Runs"].map((title) => h("th", { scope: "col" }, title)))),
      h("tbody", {}, taskRuns.map((task) => h("tr", { dataset: { taskRunId: task.id, state: task.state ? task.state.type : "" } },
        h("td", { "data-label": "State", class: "cell-state" }, badge(task.state)),
        h("td", { "data-label": "Task run" }, task.child_flow_run_id
          ? h("a", { href: `#/runs/${task.child_flow_run_id}` }, `${task.name} (subflow)`)
          : h("a", { href: `#/task-runs/${task.id}`, title: task.state && task.state.message ? task.state.message : null }, task.name)),
        h("td", { "data-label": "Task" }, task.task_key),
        h("td", { "data-label": "Start" }, showTime(task.start_time)),
        h("td", { "data-label": "Duration", class: "num" }, showDuration(runSeconds(task))),
        h("td", { "data-label": "Runs", class: "num" }, String(task.run_count))))));
  }

  apply(transition) {
    if (transition.run_id !== this.runId && transition.flow_run_id !== this.runId) return;
    if (transition.run_id === this.runId) {
      this.showState(transition);
    } else {
      const row = this.main.querySelector(`tr[data-task-run-id="${transition.run_id}"]`);
      if (row) {
        row.dataset.state = transition.to_state.type;
        put(row.querySelector(".cell-state"), badge(transition.to_state));
      }
    }
    this.reloadSoon();
  }

  async act(action) {
    const message = document.getElementById("action-message");
    const button = document.getElementById(action);
    const body = {};
    if (action === "cancel" && !window.confirm(`Cancel flow run ${this.run.name} (${this.run.flow_name})? Its code is stopped, and the run ends Cancelled.`)) return;
    if (action === "resume" && this.draft) {
      if (!this.draft.text.trim()) {
        message.textContent = "Not done: the input is empty.";
        return;
      }
      try {
        body.run_input = JSON.parse(this.draft.text);
      } catch (error) {
        message.textContent = `Not done: the input is not JSON (${error.message}).`;
        return;
      }
    }
    button.disabled = true;
    try {
      const answer = await api(`/api/flow-runs/${this.runId}/${action}`, { method: "POST", body });
      message.textContent = answer.status === "ACCEPT"
        ? `${action === "cancel" ? "Cancel" : "Resume"} requested: the run is ${answer.state.name}.`
        : `Not done (${answer.status.toLowerCase()}): ${answer.reason}`;
    } catch (error) {
      message.textContent = `Not done: ${error.message}`;
      button.disabled = false;
    }
  }

}

// --- a task run's page -----------------------------------------------------------------------

// A task run: its state, times and parameters, its flow run, its history with each state's
// message, a failed or crashed run's exception (by its state's message) and its logs, as
// `stateward task-run inspect` and `task-run logs` show them.
class TaskRunDetail extends RunPage {
  constructor(main, runId) {
    super(main, runId, "/api/task-runs");
  }

  async load() {
    await this.snapshot(async () => {
      const [detail] = await Promise.all([
        api(`/api/task-runs/${this.runId}`),
        this.logs.update().catch((error) => this.logs.failed(error)),
      ]);
      if (!this.closed) this.render(detail);
      return detail.sequence;
    });
  }

  render(detail) {
    const run = detail.task_run;
    const flowRun = detail.flow_run;
    this.run = run;
    document.title = `${run.name} · Stateward`;
    attach(this.main, this.content, this.logs);
    put(this.content,
      h("p", { class: "crumbs" }, flowRun
        ? h("a", { href: `#/runs/${flowRun.id}`, id: "back" }, `← ${flowRun.name} (${flowRun.flow_name})`)
        : h("a", { href: "#/", id: "back" }, "← All flow runs")),
      h("div", { class: "head" },
        h("h1", { id: "run-name" }, run.name),
        h("span", { id: "run-state" }, badge(run.state))),
      h("dl", { class: "facts" },
        h("dt", {}, "Task"), h("dd", {}, run.task_key),
        h("dt", {}, "Id"), h("dd", { class: "mono" }, run.id),
        flowRun ? [h("dt", {}, "Flow run"), h("dd", {}, h("a", { href: `#/runs/${flowRun.id}`, id: "flow-run-link" }, flowRun.name), ` (${flowRun.flow_name})`)] : null,
        run.child_flow_run_id ? [h("dt", {}, "Subflow run"), h("dd", {}, h("a", { href: `#/runs/${run.child_flow_run_id}` }, run.child_flow_run_id))] : null,
        runFacts(run)),
      resultSection(run.state),
      h("h2", { id: "history-title" }, "State history"),
      historyList(detail.states));
    this.logs.watch(FINAL_TYPES.has(run.state ? run.state.type : ""));
  }

  apply(transition) {
    if (transition.run_id !== this.runId) return;
    this.showState(transition);
    this.reloadSoon();
  }

}

// --- routing ---------------------------------------------------------------------------------

function showError(error) {
  const main = document.getElementById("main");
  put(main, h("p", { class: "error", role: "alert" }, error.message),
    h("p", {}, h("a", { href: "#/" }, "← All flow runs")));
}

const router = {
  view: null,

  async route() {
    if (this.view) this.view.close();
    const main = document.getElementById("main");
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, query] = hash.split("?");
    const flowRun = path.match(/^\/runs\/([0-9a-fA-F-]{36})$/);
    const taskRun = path.match(/^\/task-runs\/([0-9a-fA-F-]{36})$/);
    document.title = "Stateward runs";
    if (flowRun) this.view = new RunDetail(main, flowRun[1]);
    else if (taskRun) this.view = new TaskRunDetail(main, taskRun[1]);
    else this.view = new RunsList(main, query || "");
    try {
      await this.view.show();
    } catch (error) {
      showError(error);
    }
  },

  reload() {
    this.route();
  },
};

window.addEventListener("hashchange", () => {
  window.scrollTo(0, 0);
  router.route().then(() => document.getElementById("main").focus({ preventScroll: true }));
});
// Back online (a laptop waking up, a network coming back): resume the stream at once.
window.addEventListener("online", () => stream.restart());
window.addEventListener("DOMContentLoaded", () => {
  router.route();
  setInterval(() => router.view && router.view.tick(), 1000);
});
