// Review loop: list manual-sort items, let a person pick the right class, save it.
"use strict";

(function () {
  const list = document.getElementById("review-list");
  const status = document.getElementById("review-status");
  const errorBox = document.getElementById("error");
  const pretty = (s) => (s || "").replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  const tokenForm = document.getElementById("token-form");
  const tokenInput = document.getElementById("token");
  let pending = 0;

  // The review token: from the address printed by `wastenet serve` (#token=..., a fragment,
  // so it never reaches a server log), else typed in; kept for this browser tab only.
  const KEY = "wastenet-review-token";
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem(KEY, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = () => sessionStorage.getItem(KEY) || "";
  function askToken(message) {
    tokenForm.hidden = false;
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
    status.textContent = pending === 0 ? "Nothing to review: every manual-sort item has a label."
      : `${pending} item${pending === 1 ? "" : "s"} waiting for a label.`;
  }

  function card(item, classes) {
    const li = document.createElement("li");
    li.className = "card";
    li.id = "item-" + item.id;
    const img = document.createElement("img");
    // the photo needs the token too: fetched with it, shown from a blob URL
    fetch(item.image_url, { headers: { "Authorization": "Bearer " + token() } })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((b) => { img.src = URL.createObjectURL(b); })
      .catch(() => { img.alt += " (photo not available)"; });
    img.alt = `Photo ${item.image_name || item.id}, predicted ${pretty(item.label)}`;
    const info = document.createElement("p");
    info.className = "small";
    const when = new Date(item.created_at);
    info.textContent = `#${item.id} · ${isNaN(when) ? item.created_at : when.toLocaleString()} · ` +
      `model said ${pretty(item.label)} (${(100 * item.confidence).toFixed(1)}%), ` +
      `bin ${pretty(item.bin)} ${(100 * item.bin_confidence).toFixed(1)}%`;
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("label");
    label.className = "visually-hidden";
    label.htmlFor = "label-" + item.id;
    label.textContent = `Correct class for item ${item.id}`;
    const select = document.createElement("select");
    select.id = "label-" + item.id;
    classes.forEach((c) => {
      const o = document.createElement("option");
      o.value = c;
      o.textContent = pretty(c);
      if (c === item.label) o.selected = true;
      select.appendChild(o);
    });
    const save = document.createElement("button");
    save.type = "button";
    save.className = "button primary";
    save.textContent = "Save";
    save.addEventListener("click", async () => {
      save.disabled = true;
      try {
        const r = await fetch(`/api/review/${item.id}`, {
          method: "POST",
          headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token() },
          body: JSON.stringify({ label: select.value }),
        });
        const body = await r.json().catch(() => ({}));
        if (r.status === 401) {
          askToken("Saving needs the review token that `wastenet serve` printed at start.");
          save.disabled = false;
          return;
        }
        if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
        showError("");
        const next = li.nextElementSibling || li.previousElementSibling;
        li.remove();
        pending = Math.max(0, pending - 1);
        setStatus();
        const focusTarget = next && next.querySelector("select");
        if (focusTarget) focusTarget.focus();
      } catch (e) {
        showError(`Could not save item ${item.id}: ${e.message}`);
        save.disabled = false;
      }
    });
    row.append(label, select, save);
    li.append(img, info, row);
    return li;
  }

  function load() {
    list.replaceChildren();
    fetch("/api/review?limit=100", { headers: { "Authorization": "Bearer " + token() } })
      .then(async (r) => {
        const data = await r.json().catch(() => ({}));
        if (r.status === 401) { status.textContent = ""; askToken("The review page needs the review token that `wastenet serve` printed at start."); return null; }
        if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
        return data;
      })
      .then((data) => {
      if (!data) return;
      pending = data.pending;
      setStatus();
      if (data.retention) status.textContent += " " + data.retention;
      data.items.forEach((it) => list.appendChild(card(it, data.classes)));
      })
      .catch((e) => { status.textContent = ""; showError("Cannot load the review list: " + e.message); });
  }
  load();
})();
