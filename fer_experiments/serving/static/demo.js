// The demo page of `fer-exp serve`: a photo or the webcam -> POST /predict -> boxes, labels and probabilities.
//
// Safety: every string from the server (labels, model name, error details) is shown with textContent or drawn on a
// canvas, never parsed as HTML; the page sends only what /predict accepts (a multipart field "image" for a photo,
// a JPEG body for a webcam frame), so the server's upload limits hold.
// Pacing: the webcam loop keeps one request in flight and grabs the next frame only after the answer came back, so
// the frame rate is what the server sustains and no queue grows.
"use strict";

(function () {
  const EXPRESSIONS = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"];
  const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];
  // As `fer-exp predict --camera` (serving/video.py VideoConfig): window, IoU to match a face, frames it may miss.
  const SMOOTHING = { window: 5, minIou: 0.3, maxMissed: 5 };
  const MAX_FRAME_WIDTH = 640; // webcam frames are scaled down to this width before upload (less to send and scan)
  const JPEG_QUALITY = 0.85;
  const FPS_WINDOW = 20; // answers the frames/s and mean round trip are measured over
  const HEALTH_EVERY_MS = 15000;

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---- Face tracking and label smoothing: a port of serving/video.py FaceTracker -------------------------------

  function iou(a, b) {
    const ix = Math.max(0, Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x));
    const iy = Math.max(0, Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y));
    const inter = ix * iy;
    const union = a.w * a.h + b.w * b.h - inter;
    return union > 0 ? inter / union : 0;
  }

  class FaceTracker {
    constructor(window = SMOOTHING.window, minIou = SMOOTHING.minIou, maxMissed = SMOOTHING.maxMissed) {
      this.window = window;
      this.minIou = minIou;
      this.maxMissed = maxMissed;
      this.tracks = [];
      this.next = 1;
    }

    // boxes: [{x, y, w, h}], probs: [[7 numbers]] -> [{track, box, raw, smoothed, label, rawLabel}] in the order
    // given. Greedy matching, best overlap first (a stable sort, as Python's sorted()).
    update(boxes, probs) {
      const pairs = [];
      this.tracks.forEach((t, ti) => boxes.forEach((b, bi) => pairs.push([iou(t.box, b), ti, bi])));
      pairs.sort((p, q) => q[0] - p[0]);
      const owner = new Map();
      const used = new Set();
      for (const [overlap, ti, bi] of pairs) {
        if (overlap < this.minIou) break;
        if (used.has(ti) || owner.has(bi)) continue;
        used.add(ti);
        owner.set(bi, this.tracks[ti]);
      }
      this.tracks.forEach((t, ti) => { if (!used.has(ti)) t.missed += 1; });
      this.tracks = this.tracks.filter((t) => t.missed <= this.maxMissed);
      return boxes.map((box, bi) => {
        let track = owner.get(bi);
        if (!track) {
          track = { id: this.next++, box, history: [], missed: 0 };
          this.tracks.push(track);
        }
        track.box = box;
        track.missed = 0;
        track.history.push(probs[bi]);
        if (track.history.length > this.window) track.history.shift();
        const smoothed = probs[bi].map((_, k) => track.history.reduce((s, h) => s + h[k], 0) / track.history.length);
        return { track: track.id, box, raw: probs[bi], smoothed, label: EXPRESSIONS[argmax(smoothed)],
                 rawLabel: EXPRESSIONS[argmax(probs[bi])] };
      });
    }
  }

  function argmax(values) {
    let best = 0;
    values.forEach((v, i) => { if (v > values[best]) best = i; });
    return best;
  }

  function probabilityRow(face) {
    const p = face.probabilities || {};
    return EXPRESSIONS.map((name) => (typeof p[name] === "number" ? p[name] : 0));
  }

  function boxOf(face) {
    const b = face.box || {};
    return { x: Number(b.x) || 0, y: Number(b.y) || 0, w: Number(b.w) || 0, h: Number(b.h) || 0 };
  }

  // ---- The model panel: /health on load, again every 15 s and whenever an answer names another version ---------

  let shownVersion = null;

  function aliasOf(requested) {
    const m = /^models:\/[^@]+@(.+)$/.exec(requested || "");
    return m ? m[1] : "none (a fixed model)";
  }

  async function refreshHealth() {
    let body = null;
    let status = 0;
    try {
      const r = await fetch("health", { cache: "no-store" });
      status = r.status;
      body = await r.json();
    } catch (err) {
      $("model-status").textContent = "server unreachable";
      return;
    }
    if (!body || typeof body !== "object") return;
    const model = body.model || {};
    $("model-name").textContent = model.name || "–";
    setVersion(model.version);
    $("model-alias").textContent = aliasOf(body.requested);
    const rt = body.runtime || {};
    $("model-runtime").textContent = rt.runtime ? `${rt.runtime} (${rt.engine || "?"})` : "–";
    $("model-detector").textContent = body.detector || "–";
    $("model-status").textContent = status === 200 ? "ready" : `not ready: ${body.reason || status}`;
  }

  function setVersion(version) {
    const v = version === null || version === undefined ? "–" : String(version);
    const node = $("model-version");
    if (shownVersion !== null && shownVersion !== v) {
      node.classList.add("changed");
      node.title = `was ${shownVersion}`;
    }
    shownVersion = v;
    node.textContent = v;
  }

  // ---- Drawing ---------------------------------------------------------------------------------------------------

  function drawBoxes(ctx, faces, scale) {
    const lw = Math.max(2, Math.round(ctx.canvas.width / 320));
    const font = Math.max(12, Math.round(ctx.canvas.width / 40));
    ctx.lineWidth = lw;
    ctx.font = `bold ${font}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    faces.forEach((f, i) => {
      const color = COLORS[i % COLORS.length];
      const x = f.box.x * scale, y = f.box.y * scale, w = f.box.w * scale, h = f.box.h * scale;
      ctx.strokeStyle = color;
      ctx.strokeRect(x, y, w, h);
      const text = `${i + 1} ${f.label} ${Math.round(100 * Math.max(...f.smoothed))}%`;
      const tw = ctx.measureText(text).width + 8;
      const ty = y - font - 6 >= 0 ? y : y + h + font + 6;
      ctx.fillStyle = color;
      ctx.fillRect(x - lw / 2, ty - font - 6, tw, font + 6);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, x + 4 - lw / 2, ty - 3);
    });
  }

  function renderFaces(faces, live) {
    const list = $("faces");
    list.replaceChildren();
    if (!faces.length) {
      list.append(el("li", "face none", "No face found."));
      return;
    }
    faces.forEach((f, i) => {
      const item = el("li", "face");
      item.style.borderLeftColor = COLORS[i % COLORS.length];
      item.dataset.label = f.label;
      item.dataset.rawLabel = f.rawLabel;
      item.dataset.track = String(f.track);
      item.dataset.box = [f.box.x, f.box.y, f.box.w, f.box.h].join(",");
      const head = el("div", "face-head");
      head.append(el("span", "face-label", `Face ${i + 1}: ${f.label}`));
      head.append(el("span", "face-box", `${f.box.w}×${f.box.h} px at (${f.box.x}, ${f.box.y})`));
      item.append(head);
      if (live) item.append(el("div", "face-raw", `this frame: ${f.rawLabel}`));
      const top = argmax(f.smoothed);
      f.smoothed.forEach((p, k) => {
        const row = el("div", k === top ? "bar top" : "bar");
        row.dataset.name = EXPRESSIONS[k];
        row.append(el("span", "bar-name", EXPRESSIONS[k]));
        const track = el("span", "bar-track");
        const fill = el("span", "bar-fill");
        fill.style.display = "block";
        fill.style.width = `${(100 * Math.min(1, Math.max(0, p))).toFixed(1)}%`;
        track.append(fill);
        row.append(track);
        row.append(el("span", "bar-value", `${(100 * p).toFixed(1)}%`));
        item.append(row);
      });
      list.append(item);
    });
  }

  function renderAnswer(answer, rttMs) {
    const model = answer.model || {};
    const version = model.version === null || model.version === undefined ? "–" : String(model.version);
    const by = $("answered-by");
    by.textContent = `${model.name || "?"} version ${version} (${answer.runtime || "?"})`;
    by.dataset.version = version;
    $("rtt").textContent = `${rttMs.toFixed(0)} ms`;
    $("server-time").textContent = `${Number(answer.time_ms || 0).toFixed(0)} ms`;
    if (version !== shownVersion) {
      setVersion(version); // the alias moved: this answer came from another version; refresh the rest of the panel
      refreshHealth();
    }
  }

  function showError(status, body) {
    const node = $("error");
    const code = body && body.error ? body.error : `HTTP ${status}`;
    const detail = body && body.detail ? String(body.detail).slice(0, 300) : "no detail";
    node.textContent = `${code}: ${detail}`;
    node.dataset.code = code;
    node.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  async function post(body, headers) {
    const t0 = performance.now();
    const r = await fetch("predict", { method: "POST", body, headers, cache: "no-store" });
    let answer = null;
    try { answer = await r.json(); } catch (err) { answer = null; }
    return { ok: r.ok && answer !== null, status: r.status, answer, rtt: performance.now() - t0,
             retryAfter: Number(r.headers.get("Retry-After")) || 0 };
  }

  // ---- A photo ---------------------------------------------------------------------------------------------------

  async function analysePhoto(file) {
    if (!file) return;
    stopCamera();
    const form = new FormData();
    form.append("image", file, file.name || "photo");
    let result;
    try {
      result = await post(form);
    } catch (err) {
      showError(0, { error: "network_error", detail: String(err) });
      return;
    }
    if (!result.ok) {
      showError(result.status, result.answer);
      return;
    }
    clearError();
    const answer = result.answer;
    const canvas = $("photo");
    canvas.width = answer.image.width;
    canvas.height = answer.image.height;
    const ctx = canvas.getContext("2d");
    try {
      // EXIF orientation applied, as the server does: its boxes are in pixels of the upright image.
      const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
      ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      bitmap.close();
    } catch (err) { // a format the server reads but this browser does not (e.g. TIFF): boxes on grey
      ctx.fillStyle = "#555";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    }
    const faces = (answer.faces || []).map((f, i) => {
      const probs = probabilityRow(f);
      const label = EXPRESSIONS[argmax(probs)];
      return { track: i + 1, box: boxOf(f), raw: probs, smoothed: probs, label, rawLabel: label };
    });
    drawBoxes(ctx, faces, 1);
    $("placeholder").hidden = true;
    $("live").hidden = true;
    $("smoothing").hidden = true;
    canvas.hidden = false;
    renderFaces(faces, false);
    renderAnswer(answer, result.rtt);
    showLiveStats(false);
    document.body.dataset.photoAnswers = String(Number(document.body.dataset.photoAnswers || 0) + 1);
  }

  // ---- The webcam ------------------------------------------------------------------------------------------------

  let stream = null;
  let session = 0; // bumped on every start/stop: a loop from an older session stops at its next step

  async function startCamera() {
    if (stream) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError(0, { error: "no_camera_access", detail: "this browser allows the webcam only on a secure page: open "
        + "it as http://localhost:PORT/ or http://127.0.0.1:PORT/ on the serving machine, or behind https" });
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } },
                                                           audio: false });
    } catch (err) {
      showError(0, { error: "no_camera", detail: `${err.name || "Error"}: ${err.message || err}` });
      return;
    }
    clearError();
    const video = $("video");
    video.srcObject = stream;
    await video.play().catch(() => {});
    $("placeholder").hidden = true;
    $("photo").hidden = true;
    $("live").hidden = false;
    $("smoothing").hidden = false;
    $("fps").textContent = "–";
    $("frames").textContent = "0";
    showLiveStats(true);
    $("camera-start").disabled = true;
    $("camera-stop").disabled = false;
    session += 1;
    liveLoop(session);
  }

  function showLiveStats(on) {
    document.querySelectorAll(".live-only").forEach((node) => { node.hidden = !on; });
  }

  function stopCamera() {
    session += 1;
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    $("camera-start").disabled = false;
    $("camera-stop").disabled = true;
  }

  async function liveLoop(mine) {
    const video = $("video");
    const overlay = $("overlay");
    const grab = document.createElement("canvas");
    const tracker = new FaceTracker();
    const answeredAt = [];
    const rtts = [];
    let frames = 0;
    while (mine === session) {
      if (video.readyState < 2 || !video.videoWidth) {
        await sleep(30);
        continue;
      }
      const vw = video.videoWidth, vh = video.videoHeight;
      const scale = Math.min(1, MAX_FRAME_WIDTH / vw);
      grab.width = Math.round(vw * scale);
      grab.height = Math.round(vh * scale);
      grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
      const blob = await new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
      if (!blob) { await sleep(100); continue; }
      let result;
      try {
        result = await post(blob, { "Content-Type": "image/jpeg" });
      } catch (err) {
        showError(0, { error: "network_error", detail: String(err) });
        await sleep(1000);
        continue;
      }
      if (mine !== session) break;
      if (!result.ok) { // e.g. 503 while no model is behind the alias, or too many uploads: wait, then go on
        showError(result.status, result.answer);
        await sleep(1000 * Math.min(10, Math.max(1, result.retryAfter)));
        continue;
      }
      clearError();
      const answer = result.answer;
      const faces = answer.faces || [];
      const sent = answer.image && answer.image.width ? answer.image.width : grab.width;
      const tracked = tracker.update(faces.map(boxOf), faces.map(probabilityRow));
      frames += 1;
      answeredAt.push(performance.now());
      rtts.push(result.rtt);
      if (answeredAt.length > FPS_WINDOW) { answeredAt.shift(); rtts.shift(); }
      overlay.width = vw;
      overlay.height = vh;
      const ctx = overlay.getContext("2d");
      ctx.clearRect(0, 0, vw, vh);
      drawBoxes(ctx, tracked, vw / sent);
      renderFaces(tracked, true);
      renderAnswer(answer, result.rtt);
      const span = (answeredAt[answeredAt.length - 1] - answeredAt[0]) / 1000;
      const fps = answeredAt.length > 1 && span > 0 ? (answeredAt.length - 1) / span : 0;
      const meanRtt = rtts.reduce((s, v) => s + v, 0) / rtts.length;
      $("fps").textContent = fps > 0 ? fps.toFixed(1) : "–";
      $("fps").dataset.value = fps.toFixed(3);
      $("rtt").textContent = `${result.rtt.toFixed(0)} ms (mean ${meanRtt.toFixed(0)} ms)`;
      $("frames").textContent = String(frames);
      await sleep(0); // let the page paint; the next frame is grabbed only now, after this answer
    }
  }

  // ---- Wiring ----------------------------------------------------------------------------------------------------

  function init() {
    const drop = $("drop");
    $("file").addEventListener("change", (e) => {
      const file = e.target.files && e.target.files[0];
      e.target.value = ""; // choosing the same file again is a new request
      analysePhoto(file);
    });
    ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      analysePhoto(file);
    });
    $("camera-start").addEventListener("click", startCamera);
    $("camera-stop").addEventListener("click", stopCamera);
    refreshHealth();
    setInterval(refreshHealth, HEALTH_EVERY_MS);
  }

  window.FerDemo = { FaceTracker, iou, EXPRESSIONS, SMOOTHING };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
