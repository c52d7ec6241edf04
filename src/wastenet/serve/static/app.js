// wastenet page: pick/drop a photo or use the camera; show the bin decision.
// Vanilla JS, same-origin requests only (the server's CSP forbids anything else).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const fileInput = $("file-input");
  const dropZone = $("drop-zone");
  const thresholdInput = $("threshold");
  const thresholdValue = $("threshold-value");
  const errorBox = $("error");
  const viewer = $("viewer");
  const preview = $("preview");
  const heatmapImg = $("heatmap");
  const caption = $("viewer-caption");
  const video = $("camera");
  const camStart = $("camera-start");
  const camStop = $("camera-stop");
  const camCapture = $("camera-capture");
  const heatToggle = $("heatmap-toggle");
  const heatNote = $("heatmap-note");
  const BINS = ["recyclable", "compostable", "landfill", "manual_sort"];
  const FRAME_INTERVAL_MS = 350; // ~3 frames per second at most
  const FRAME_MAX_SIDE = 512;

  let health = null;
  let lastBlob = null;       // the photo currently shown (for the heatmap request)
  let lastName = "photo.jpg";
  let lastResult = null;
  let previewUrl = null;
  let stream = null;
  let camTimer = null;
  let inFlight = false;
  let requestSeq = 0;        // only the newest answer is shown

  const pretty = (s) => (s || "").replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  const pct = (p) => (p == null ? "–" : (100 * p).toFixed(1) + "%");
  const binClass = (b) => "bin-" + (BINS.includes(b) ? b : "other");

  function showError(msg) {
    errorBox.textContent = msg;
    errorBox.hidden = !msg;
  }

  // ------------------------------------------------------------------ model info
  fetch("/api/health")
    .then((r) => r.json())
    .then((h) => {
      health = h;
      $("model-info").textContent =
        `Model ${h.model} (${h.backend}), ${h.classes.length} classes, bins: ${h.bins.join(", ")}`;
      thresholdInput.value = h.threshold;
      thresholdValue.textContent = Number(h.threshold).toFixed(2);
      if (!h.explain) heatNote.textContent = "(needs a PyTorch checkpoint)";
    })
    .catch(() => { $("model-info").textContent = "Model info unavailable."; });

  thresholdInput.addEventListener("input", () => {
    thresholdValue.textContent = Number(thresholdInput.value).toFixed(2);
  });
  thresholdInput.addEventListener("change", () => {
    // re-decide the shown photo with the new threshold (not logged again)
    if (lastBlob && !stream) classify(lastBlob, lastName, { log: false });
  });

  // ------------------------------------------------------------------ requests
  async function classify(blob, name, opts) {
    opts = opts || {};
    const seq = ++requestSeq;
    const params = new URLSearchParams({
      source: opts.source || "upload",
      log: opts.log === false ? "false" : "true",
    });
    // until /api/health has set the slider, the server's own default applies
    if (health) params.set("threshold", thresholdInput.value);
    if (opts.explain) params.set("explain", "true");
    const form = new FormData();
    form.append("file", blob, name);
    inFlight = true;
    try {
      const resp = await fetch("/api/predict?" + params.toString(), { method: "POST", body: form });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      if (seq !== requestSeq) return null; // a newer request superseded this one
      if (!resp.ok) {
        showError((body && body.error) || `Request failed (HTTP ${resp.status})`);
        return null;
      }
      showError("");
      render(body);
      return body;
    } catch (e) {
      if (seq === requestSeq) showError("Cannot reach the server: " + e.message);
      return null;
    } finally {
      inFlight = false;
    }
  }

  function render(r) {
    lastResult = r;
    const decision = $("decision");
    decision.className = "decision " + binClass(r.decision);
    decision.dataset.decision = r.decision;
    decision.textContent = "";
    const main = document.createElement("span");
    const why = document.createElement("span");
    why.className = "why";
    if (r.decision === "manual_sort") {
      main.textContent = "Manual sort";
      why.textContent = r.reason === "unknown"
        ? `Unlike anything the model was trained on (best guess ${pretty(r.bin)} at ${pct(r.bin_confidence)}): a person should sort it.`
        : `Not sure enough: best bin ${pretty(r.bin)} at ${pct(r.bin_confidence)} (threshold ${pct(r.threshold)}).`;
    } else {
      main.textContent = pretty(r.decision);
      why.textContent = `${pct(r.bin_confidence)} sure it belongs in ${r.decision.replace(/_/g, " ")}.`;
    }
    decision.append(main, why);

    $("label").textContent = pretty(r.label);
    $("confidence").textContent = pct(r.confidence);
    const bin = $("bin");
    bin.textContent = pretty(r.bin);
    bin.dataset.bin = r.bin || "";
    bin.className = binClass(r.bin);

    const list = $("topk");
    list.textContent = "";
    const binOf = (health && health.class_bins) || {};
    (r.topk || []).slice(0, 3).forEach((t) => {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = pretty(t.label);
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("role", "img");
      bar.setAttribute("aria-label", `${pretty(t.label)}: ${pct(t.probability)}`);
      const fill = document.createElement("span");
      fill.style.width = Math.max(0, Math.min(100, 100 * t.probability)).toFixed(1) + "%";
      if (binOf[t.label]) fill.className = binClass(binOf[t.label]);
      bar.appendChild(fill);
      const p = document.createElement("span");
      p.className = "pct";
      p.textContent = pct(t.probability);
      li.append(name, bar, p);
      list.appendChild(li);
    });

    heatToggle.disabled = !(health && health.explain) || !!stream;
    if (r.explanation) {
      heatmapImg.src = r.explanation;
      showHeatmap(heatToggle.checked);
    } else if (r.explanation_error) {
      heatNote.textContent = r.explanation_error;
    }
  }

  // ------------------------------------------------------------------ photos
  function showPhoto(blob) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(blob);
    preview.src = previewUrl;
    viewer.hidden = false;
    video.hidden = true;
    heatmapImg.removeAttribute("src");
    showHeatmap(false);
  }

  function showHeatmap(on) {
    const have = on && heatmapImg.getAttribute("src");
    heatmapImg.hidden = !have;
    preview.hidden = !!have || !!stream;
    caption.textContent = have ? "Heat map over the centre crop the model sees: warm colours mattered most." : "";
  }

  function handleFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(`${file.name} is not an image.`);
      return;
    }
    if (health && file.size > health.max_upload_bytes) {
      showError(`${file.name} is too large (limit ${(health.max_upload_bytes / 1048576).toFixed(0)} MB).`);
      return;
    }
    stopCamera();
    lastBlob = file;
    lastName = file.name || "photo.jpg";
    showPhoto(file);
    classify(file, lastName, { source: "upload", explain: heatToggle.checked });
  }

  fileInput.addEventListener("change", () => {
    handleFile(fileInput.files && fileInput.files[0]);
    fileInput.value = ""; // picking the same file again still fires "change"
  });
  ["dragenter", "dragover"].forEach((ev) =>
    dropZone.addEventListener(ev, (e) => { e.preventDefault(); dropZone.classList.add("dragover"); }));
  ["dragleave", "drop"].forEach((ev) =>
    dropZone.addEventListener(ev, (e) => { e.preventDefault(); dropZone.classList.remove("dragover"); }));
  dropZone.addEventListener("drop", (e) => {
    const f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    handleFile(f);
  });
  // a photo dropped anywhere else must not navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  heatToggle.addEventListener("change", async () => {
    if (!heatToggle.checked) { showHeatmap(false); return; }
    if (heatmapImg.getAttribute("src")) { showHeatmap(true); return; }
    if (!lastBlob) return;
    heatNote.textContent = "computing…";
    await classify(lastBlob, lastName, { explain: true, log: false });
    if (heatNote.textContent === "computing…") heatNote.textContent = "";
  });

  // ------------------------------------------------------------------ camera
  function grabFrame() {
    const w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) return Promise.resolve(null);
    const scale = Math.min(1, FRAME_MAX_SIDE / Math.max(w, h));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(w * scale);
    canvas.height = Math.round(h * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
  }

  async function cameraTick() {
    if (!stream) return;
    if (!inFlight) {
      const blob = await grabFrame();
      if (blob && stream) {
        lastBlob = blob;
        lastName = "camera.jpg";
        // live frames are previews, not decisions: they are not logged
        await classify(blob, "camera.jpg", { source: "camera", log: false });
      }
    }
    if (stream) camTimer = setTimeout(cameraTick, FRAME_INTERVAL_MS);
  }

  async function startCamera() {
    showError("");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("This browser cannot use the camera here (it needs HTTPS or localhost). You can still choose a photo.");
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { facingMode: { ideal: "environment" }, width: { ideal: 1280 } }, audio: false,
      });
    } catch (e) {
      stream = null;
      const why = e && e.name === "NotAllowedError" ? "Camera permission was denied."
        : e && e.name === "NotFoundError" ? "No camera was found."
        : "The camera could not be started (" + ((e && e.message) || e) + ").";
      showError(why + " You can still choose a photo.");
      return;
    }
    video.srcObject = stream;
    viewer.hidden = false;
    video.hidden = false;
    preview.hidden = true;
    heatToggle.checked = false;
    heatToggle.disabled = true;
    showHeatmap(false);
    camStart.hidden = true;
    camStop.hidden = false;
    camCapture.hidden = false;
    try { await video.play(); } catch (e) { /* autoplay policies: frames still arrive */ }
    camTimer = setTimeout(cameraTick, 200);
    camStop.focus();
  }

  function stopCamera() {
    if (camTimer) clearTimeout(camTimer);
    camTimer = null;
    if (!stream) return;
    stream.getTracks().forEach((t) => t.stop());
    stream = null;
    video.srcObject = null;
    video.hidden = true;
    camStart.hidden = false;
    camStop.hidden = true;
    camCapture.hidden = true;
    heatToggle.disabled = !(health && health.explain);
  }

  camStart.addEventListener("click", startCamera);
  camStop.addEventListener("click", () => { stopCamera(); camStart.focus(); });
  camCapture.addEventListener("click", async () => {
    // keep one frame as a real decision (logged; kept for review if manual sort)
    const blob = await grabFrame();
    if (!blob) return;
    stopCamera();
    lastBlob = blob;
    lastName = "camera.jpg";
    showPhoto(blob);
    classify(blob, lastName, { source: "camera", log: true });
  });
  window.addEventListener("pagehide", stopCamera);
})();
