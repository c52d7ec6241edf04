// The review loop as a labelling tool: one item at a time, one key per class, the next item comes up
// by itself, undo of the last label, a count of what is left; the model versions (adapt now, why each was
// or was not promoted, serve one: a rollback) and the live figures (/api/stats) below.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const status = $("review-status");
  const errorBox = $("error");
  const tokenForm = $("token-form");
  const tokenInput = $("token");
  const current = $("current");
  const photo = $("current-photo");
  const buttons = $("label-buttons");
  const undoButton = $("undo");
  const skipButton = $("skip");
  const pretty = (s) => (s || "").replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  // keys 1..9 then 0, then letters that are not E (not an item), N (new kind), S (skip) or U (undo)
  const KEYS = "1234567890abcdfghijklmopqrtvwxyz".split("");
  const NOT_AN_ITEM = "not_an_item";  // wastenet.ood.NOT_AN_ITEM: a photo of no item, no bin, never a class
  const newKindForm = $("new-kind-form");

  let queue = [];        // pending items, newest first, as /api/review lists them
  let pending = 0;       // how many are left in the log (the queue holds at most one page)
  let classes = [];      // the model's classes, then the new kinds reviewers named (with their bins)
  let kindBins = {};     // {new kind: bin}
  let allowNewBins = false;
  let shown = null;      // the item on screen
  let lastSaved = null;  // {item, label}: what U brings back
  let skipped = new Set();
  let busy = false;

  // The review token: from the address printed by `wastenet serve` (#token=..., a fragment,
  // so it never reaches a server log), else typed in; kept for this browser tab only.
  const KEY = "wastenet-review-token";
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem(KEY, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = () => sessionStorage.getItem(KEY) || "";
  const authed = (extra) => ({ headers: { "Authorization": "Bearer " + token(), ...(extra || {}) } });
  function askToken(message) {
    tokenForm.hidden = false;
    current.hidden = true;
    if (message) showError(message);
    tokenInput.focus();
  }
  tokenForm.addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, tokenInput.value.trim());
    tokenInput.value = "";
    tokenForm.hidden = true;
    showError("");
    load();
  });

  function showError(msg) { errorBox.textContent = msg; errorBox.hidden = !msg; }
  function setStatus() {
    const audits = queue.filter((it) => it.kind === "audit").length;
    status.textContent = pending === 0 ? "Nothing to review: every manual-sort item and audit has a label."
      : `${pending} left to label` + (audits ? ` (${audits} audit${audits === 1 ? "" : "s"} among the next ${queue.length})` : "") + ".";
  }

  function renderButtons() {
    buttons.replaceChildren();
    classes.forEach((c, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "button label-button";
      b.dataset.label = c;
      b.dataset.key = KEYS[i] || "";
      b.id = "label-" + c;
      const k = document.createElement("kbd");
      k.textContent = (KEYS[i] || "").toUpperCase();
      b.append(k, " " + pretty(c) + (kindBins[c] ? ` (new, ${pretty(kindBins[c])})` : ""));
      b.addEventListener("click", () => label(c));
      buttons.appendChild(b);
    });
  }

  function show(item, savedLabel) {
    shown = item;
    if (!item) { current.hidden = true; return; }
    current.hidden = false;
    current.dataset.id = item.id;
    photo.removeAttribute("src");
    photo.alt = `Photo ${item.image_name || item.id}, predicted ${pretty(item.label)}`;
    // the photo needs the token too: fetched with it, shown from a blob URL
    fetch(item.image_url, authed())
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((b) => { if (shown === item) photo.src = URL.createObjectURL(b); })
      .catch(() => { photo.alt += " (photo not available)"; });
    const audit = item.kind === "audit";
    $("current-kind").textContent = audit ? "Audit" : "Manual sort";
    $("current-kind").className = "badge " + (audit ? "badge-audit" : "badge-manual");
    const when = new Date(item.created_at);
    $("current-info").textContent = `#${item.id} · ${isNaN(when) ? item.created_at : when.toLocaleString()} · ` +
      `model said ${pretty(item.label)} (${(100 * item.confidence).toFixed(1)}%), bin ${pretty(item.bin)}`;
    $("current-note").textContent = (audit
      ? "A random check of an automatic decision (drawn by chance, not by confidence): label what it really is."
      : "The model was not sure enough and sent this item to manual sort.")
      + (savedLabel ? ` You labelled it ${pretty(savedLabel)}: press the right key to change it.` : "");
    buttons.querySelectorAll("button").forEach((b) => b.classList.toggle("guess", b.dataset.label === item.label));
  }

  function nextItem() {
    const item = queue.find((it) => !skipped.has(it.id)) || null;
    show(item);
    if (!item && pending > 0 && queue.length === 0) load();  // the page of items is done: fetch the next
  }

  async function label(value, bin) {
    if (!shown || busy) return;
    const item = shown;
    busy = true;
    try {
      const body = { label: value };
      if (bin || kindBins[value]) body.bin = bin || kindBins[value];
      const answer = await post(`/api/review/${item.id}`, `Saving item ${item.id}`, body);
      if (!answer) return;
      if (!classes.includes(answer.reviewed_label) && answer.reviewed_label !== NOT_AN_ITEM) {  // a new kind: a button (and a key) from now on
        kindBins[answer.reviewed_label] = answer.reviewed_bin;
        classes = [...classes, answer.reviewed_label];
        renderButtons();
      }
      newKindForm.hidden = true;
      const wasPending = queue.some((it) => it.id === item.id);
      queue = queue.filter((it) => it.id !== item.id);
      if (wasPending) pending = Math.max(0, pending - 1);
      lastSaved = { item, label: value };
      undoButton.disabled = false;
      $("last-saved").textContent = `Saved #${item.id} as ${pretty(answer.reviewed_label)}.`;
      setStatus();
      nextItem();
      loadStats();
      loadVersions();  // --adapt-every: this label may have started a run
    } catch (e) {  // no answer at all (the server is gone)
      showError(`Could not save item ${item.id}: ${e.message}`);
    } finally {
      busy = false;
    }
  }

  function undo() {
    if (!lastSaved || busy) return;
    // the last labelled item comes back; the next key relabels it (the log keeps every label)
    show(lastSaved.item, lastSaved.label);
    $("last-saved").textContent = `Undo: #${lastSaved.item.id} is back; press its right key.`;
    lastSaved = null;
    undoButton.disabled = true;
  }

  function skip() {
    if (!shown) return;
    skipped.add(shown.id);
    nextItem();
  }

  function askNewKind() {
    if (!shown) return;
    newKindForm.hidden = false;
    $("new-kind-name").focus();
  }
  newKindForm.addEventListener("submit", (e) => {
    e.preventDefault();
    label($("new-kind-name").value.trim(), $("new-kind-bin").value.trim());
    $("new-kind-name").value = "";
  });

  undoButton.addEventListener("click", undo);
  skipButton.addEventListener("click", skip);
  $("not-an-item").addEventListener("click", () => label(NOT_AN_ITEM));
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target instanceof HTMLInputElement) return;
    const key = e.key.toLowerCase();
    if (key === "u") { e.preventDefault(); undo(); return; }
    if (key === "s") { e.preventDefault(); skip(); return; }
    if (key === "n") { e.preventDefault(); askNewKind(); return; }
    if (key === "e") { e.preventDefault(); label(NOT_AN_ITEM); return; }
    const i = KEYS.indexOf(key);
    if (i >= 0 && i < classes.length && shown) { e.preventDefault(); label(classes[i]); }
  });

  // ------------------------------------------------------------------ live figures
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
  function estimate(e) {  // as wastenet.audit.format_estimate: the interval alone under 30 items
    if (!e || !e.n) return "–";
    const span = `${(100 * e.low).toFixed(1)}–${(100 * e.high).toFixed(1)}%`;
    return e.show_value ? `${pct(e.value)} (${span}, n=${e.n})` : `${span} (n=${e.n})`;
  }
  function statsTable(model) {
    const table = document.createElement("table");
    table.className = "stats";
    const head = ["Bin", "Decisions", "Auto", "Manual sort", "Audits labelled / drawn", "Contamination (95%)",
                  "Class accuracy of auto-sorted (95%)", "Manual sort the model had right"];
    const tr = document.createElement("tr");
    head.forEach((h) => { const th = document.createElement("th"); th.scope = "col"; th.textContent = h; tr.appendChild(th); });
    table.appendChild(tr);
    [["All bins", model.all], ...Object.entries(model.bins).map(([b, g]) => [pretty(b), g])].forEach(([name, g]) => {
      const row = document.createElement("tr");
      row.dataset.bin = name;
      [name, g.decisions, pct(g.auto_share), pct(g.manual_sort_share), `${g.audits_labelled} / ${g.audits_drawn}`,
       estimate(g.contamination), estimate(g.auto_class_accuracy), estimate(g.manual_sort_model_right)]
        .forEach((v, i) => { const td = document.createElement(i ? "td" : "th"); td.textContent = v; row.appendChild(td); });
      table.appendChild(row);
    });
    return table;
  }
  function loadStats() {
    fetch("/api/stats", authed())
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((s) => {
        const body = $("stats-body");
        body.replaceChildren();
        if (!s.models.length) body.textContent = "No decisions logged yet.";
        s.models.forEach((m) => {
          const h = document.createElement("h3");
          h.className = "small";
          h.textContent = `Model ${m.model_id || "(unknown version)"}${m.model_id === s.model_id ? " (serving now)" : ""}` +
            (m.model ? ` · ${m.model}` : "");
          body.append(h, statsTable(m));
        });
        $("stats-note").textContent = `Audit rate ${pct(s.audit_rate)}. ${s.note}`;
      })
      .catch((e) => { $("stats-body").textContent = "Cannot load the figures: " + e.message; });
  }

  // ------------------------------------------------------------------ model versions
  // GET /api/models: every version with how it was made and why it was (not) promoted; the adaptation
  // running now. "Adapt now" and "Serve this version" (a rollback) need the token, as labels do.
  let versionsTimer = null;
  const fix3 = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(3));
  // the held-out figures the rule that decided compared (the version's inputs say which: serve --adapt-compare)
  function heldOutText(compare, cur, cand) {
    if (compare === "sorted")
      return `sorts ${pct(cur.auto_share)} → ${pct(cand.auto_share)} itself, ` +
        `${fix3(cur.auto_class_accuracy)} → ${fix3(cand.auto_class_accuracy)} of those in the right class`;
    return `class accuracy ${fix3(cur.class_accuracy)} → ${fix3(cand.class_accuracy)}`;
  }
  function adaptationText(a) {
    const when = (a.every ? `Adapts after every ${a.every} new reviewed items` : "Adapts when asked (Adapt now)") +
      (a.compare === "sorted" ? "; a candidate is compared on the items each model sorts itself" : "");
    if (!a.can_adapt) return `This server cannot adapt: ${a.reason}`;
    if (a.state === "preparing")
      return `Preparing the rehearsal set's features for the adaptations to come: started ${a.elapsed_s ?? 0} s ago` +
        (a.queued ? `; an adaptation (${a.queued}) starts when they are ready.` : ".") + ` ${when}.`;
    if (a.state === "running")
      return `Adapting now: started ${a.elapsed_s ?? 0} s ago (${a.trigger}), from version ${a.parent}, on ${a.reviewed_items} reviewed items. ${when}.`;
    const last = a.last;
    if (!last) return `No adaptation yet. ${when}.`;
    const took = last.seconds !== undefined ? ` in ${Math.round(last.seconds)} s` : "";
    if (a.state === "failed" || last.error) return `The last adaptation failed${took}: ${last.error}. ${when}.`;
    return `Last adaptation${took}: version ${last.version} ${last.promoted ? "promoted" : "not promoted"} (${last.reason}). ${when}.`;
  }
  function versionRow(v, active) {
    const tr = document.createElement("tr");
    tr.dataset.version = v.id;
    const s = v.scores || {};
    const cur = s.current || {}, cand = s.candidate || {}, f = s.forgetting;
    const inputs = v.inputs || {};
    const made = new Date(v.created_at);
    const cells = [
      `${v.id}` + (v.id === 0 ? " (started with)" : ""),
      isNaN(made) ? v.created_at : made.toLocaleString(),
      v.parent === null || v.parent === undefined ? "–" : `${v.parent}`,
      v.id === 0 ? "–" : `${(inputs.trained_on || []).length} / ${(inputs.held_out || []).length}`,
      v.id === 0 ? "–" : heldOutText(inputs.compare, cur, cand),
      f ? `${fix3(f.reference)} → ${fix3(f.candidate)} (at most ${f.allowed_points} point${f.allowed_points === 1 ? "" : "s"} lower)` : "–",
      (v.promoted ? "Promoted: " : "Kept out: ") + v.reason,
    ];
    cells.forEach((text, i) => { const td = document.createElement(i ? "td" : "th"); td.textContent = text; tr.appendChild(td); });
    const td = document.createElement("td");
    if (v.id === active) {
      td.textContent = "Serving now";
    } else {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "button";
      b.textContent = v.promoted ? "Serve this version" : "Serve it anyway";
      b.addEventListener("click", () => activate(v.id));
      td.appendChild(b);
    }
    tr.appendChild(td);
    return tr;
  }
  function loadVersions() {
    clearTimeout(versionsTimer);
    fetch("/api/models")
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((m) => {
        const a = m.adaptation;
        $("adapt-status").textContent = adaptationText(a);
        const busy = a.state === "running" || a.state === "preparing";
        $("adapt-now").disabled = !a.can_adapt || a.state === "running" || Boolean(a.queued);
        const body = $("versions-body");
        body.replaceChildren();
        if (m.versions.length) {
          const table = document.createElement("table");
          table.className = "stats";
          const head = document.createElement("tr");
          ["Version", "Made", "From", "Trained on / held out", "Held-out items (serving → candidate)",
           "Training classes' accuracy (version 0 → candidate)", "Outcome", ""].forEach((h) => {
            const th = document.createElement("th"); th.scope = "col"; th.textContent = h; head.appendChild(th);
          });
          table.appendChild(head);
          [...m.versions].reverse().forEach((v) => table.appendChild(versionRow(v, m.active)));
          body.appendChild(table);
        }
        if (busy) versionsTimer = setTimeout(loadVersions, 2000);
      })
      .catch((e) => { $("adapt-status").textContent = "Cannot load the model versions: " + e.message; });
  }
  // every change goes through here: the token, JSON, and one way to say it was refused (the answer, or null)
  async function post(url, what, body) {
    const r = await fetch(url, { method: "POST", ...authed({ "Content-Type": "application/json" }),
                                 body: JSON.stringify(body || {}) });
    const answer = await r.json().catch(() => ({}));
    if (r.status === 401) { askToken(`${what} needs the review token that \`wastenet serve\` printed at start.`); return null; }
    if (!r.ok) { showError(`${what}: ${answer.error || "HTTP " + r.status}`); return null; }
    showError("");
    return answer;
  }
  async function activate(id) {
    if (await post(`/api/models/${id}/activate`, `Serving version ${id}`)) { loadVersions(); loadStats(); }
  }
  $("adapt-now").addEventListener("click", async () => {
    $("adapt-now").disabled = true;
    await post("/api/models/adapt", "Adapting");
    loadVersions();
  });

  function load() {
    fetch("/api/review?limit=100", authed())
      .then(async (r) => {
        const data = await r.json().catch(() => ({}));
        if (r.status === 401) { status.textContent = ""; askToken("The review page needs the review token that `wastenet serve` printed at start."); return null; }
        if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
        return data;
      })
      .then((data) => {
        if (!data) return;
        pending = data.pending;
        queue = data.items;
        kindBins = Object.fromEntries(data.new_kinds.map((k) => [k.label, k.bin]));
        allowNewBins = data.allow_new_bins;
        const all = [...data.classes, ...data.new_kinds.map((k) => k.label)];
        if (JSON.stringify(classes) !== JSON.stringify(all)) { classes = all; renderButtons(); }
        $("bin-names").replaceChildren(...data.bins.map((b) => { const o = document.createElement("option"); o.value = b; return o; }));
        $("new-kinds-note").textContent = data.new_kinds.length
          ? "New kinds: " + data.new_kinds.map((k) => `${pretty(k.label)} → ${pretty(k.bin)}: ${k.reviewed} of ${data.new_class_min} reviewed items before it can become a class`).join("; ") + "."
          : (allowNewBins ? "" : "A new kind goes to one of the bins the model knows.");
        setStatus();
        if (data.retention) status.textContent += " " + data.retention;
        nextItem();
        loadStats();
        loadVersions();
      })
      .catch((e) => { status.textContent = ""; showError("Cannot load the review list: " + e.message); });
  }
  load();
})();
