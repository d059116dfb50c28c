// kmsfs console: plain JavaScript, no framework. Every value from the server
// reaches the page through textContent (never innerHTML), and every change
// is a POST carrying the session's CSRF token in X-CSRF-Token.
"use strict";

const S = { csrf: "", keysOffset: 0, keysLimit: 50, key: null, pending: null,
            trailHead: null, trailOlder: null, trailTimer: null, mountsTimer: null,
            countdownTimer: null };

function $(id) { return document.getElementById(id); }

function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) if (k != null) e.append(k instanceof Node ? k : String(k));
  return e;
}

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (method === "POST") {
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-CSRF-Token"] = S.csrf;
    opts.body = JSON.stringify(body || {});
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401) { location.reload(); }
  if (!r.ok) {
    const err = new Error((data && data.message) || ("HTTP " + r.status));
    err.code = data && data.error; err.status = r.status;
    throw err;
  }
  return data;
}

function notice(msg) {
  const n = $("notice");
  n.textContent = msg || "";
  n.classList.toggle("hidden", !msg);
}

function fmtTime(t) {
  if (t == null) return "-";
  return new Date(t * 1000).toISOString().replace(".000Z", "Z");
}

function fmtBytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let x = n;
  while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
  return (i === 0 ? x : x.toFixed(1)) + " " + u[i];
}

function stateBadge(s) { return el("span", { class: "state " + s, text: s }); }

function clearBody(table) { const b = table.tBodies[0]; b.replaceChildren(); return b; }

// ---- routing ----------------------------------------------------------------

function show(page) {
  for (const p of document.querySelectorAll(".page")) p.classList.add("hidden");
  $("page-" + page).classList.remove("hidden");
  for (const n of ["keys", "files", "trail"]) {
    $("nav-" + n).classList.toggle("active", page === n || (page === "key" && n === "keys"));
  }
}

function stopTimers() {
  clearInterval(S.trailTimer); S.trailTimer = null;
  clearInterval(S.mountsTimer); S.mountsTimer = null;
  clearInterval(S.countdownTimer); S.countdownTimer = null;
}

async function route() {
  stopTimers();
  notice("");
  const h = decodeURIComponent(location.hash.slice(1));
  try {
    if (h.startsWith("key/")) { show("key"); await loadKey(h.slice(4)); }
    else if (h === "files") { show("files"); await loadFiles(false); }
    else if (h === "trail") { show("trail"); await loadTrail(); }
    else { show("keys"); await loadKeys(); }
  } catch (e) { notice(e.message); }
}

// ---- keys -------------------------------------------------------------------

async function loadKeys() {
  const q = new URLSearchParams({ offset: S.keysOffset, limit: S.keysLimit,
                                  q: $("keys-q").value, state: $("keys-state").value });
  const r = await api("GET", "/api/keys?" + q);
  const body = clearBody($("keys-table"));
  for (const k of r.Keys) {
    const link = el("a", { href: "#key/" + encodeURIComponent(k.KeyId), text: k.KeyId, class: "mono" });
    body.append(el("tr", { "data-key-id": k.KeyId },
      el("td", { class: "mono" }, link),
      el("td", { text: (k.Aliases || []).join(", ") }),
      el("td", {}, stateBadge(k.KeyState)),
      el("td", { class: "mono", text: fmtTime(k.CreationDate) }),
      el("td", { text: k.Description })));
  }
  const first = r.Matching ? r.Offset + 1 : 0;
  const last = r.Offset + r.Keys.length;
  $("keys-summary").textContent = `${first}\u2013${last} of ${r.Matching} matching (${r.Total} keys)`;
  $("keys-prev").disabled = r.Offset === 0;
  $("keys-next").disabled = last >= r.Matching;
}

function fact(label, value) {
  return el("tr", {}, el("th", { text: label }), el("td", {}, value));
}

function countdown(target, now0) {
  const span = el("span", { class: "countdown", id: "deletion-countdown" });
  const start = Date.now();
  const tick = () => {
    let s = Math.max(0, target - now0 - Math.floor((Date.now() - start) / 1000));
    const d = Math.floor(s / 86400); s %= 86400;
    const h = Math.floor(s / 3600); s %= 3600;
    const m = Math.floor(s / 60); s %= 60;
    span.textContent = `in ${d}d ${h}h ${m}m ${s}s`;
  };
  tick();
  S.countdownTimer = setInterval(tick, 1000);
  return span;
}

async function loadKey(id) {
  const k = await api("GET", "/api/key?id=" + encodeURIComponent(id));
  S.key = k;
  $("key-title").textContent = k.KeyId;
  const body = clearBody($("key-facts"));
  body.append(fact("State", stateBadge(k.KeyState)));
  body.append(fact("Aliases", (k.Aliases || []).join(", ") || "-"));
  body.append(fact("Description", k.Description || "-"));
  body.append(fact("Created", fmtTime(k.CreationDate)));
  body.append(fact("Origin", k.Origin));
  body.append(fact("Key material version", String(k.CurrentKeyMaterialVersion)));
  if (k.ValidTo) body.append(fact("Imported material expires", fmtTime(k.ValidTo)));
  if (k.DeletionDate) {
    body.append(fact("Deletion", el("span", {}, fmtTime(k.DeletionDate) + " ", countdown(k.DeletionDate, k.Now))));
  }
  const rot = k.Rotation;
  if (rot) {
    body.append(fact("Automatic rotation", rot.KeyRotationEnabled
      ? `every ${rot.RotationPeriodInDays} days, next ${fmtTime(rot.NextRotationDate)}` : "off"));
  }
  const tags = (k.Tags || []).map(t => t.TagKey + "=" + t.TagValue).join(", ");
  body.append(fact("Tags", tags || "-"));
  body.append(fact("ARN", el("span", { class: "mono", text: k.Arn })));
  const rb = clearBody($("key-rotations"));
  for (const r of (k.Rotations || [])) {
    rb.append(el("tr", {}, el("td", { text: String(r.KeyMaterialVersion) }),
      el("td", { class: "mono", text: fmtTime(r.RotationDate) }), el("td", { text: r.RotationType })));
  }
  if (!(k.Rotations || []).length) rb.append(el("tr", {}, el("td", { colSpan: 3, text: "never rotated" })));
  const st = k.KeyState;
  $("act-enable").disabled = st !== "Disabled";
  $("act-disable").disabled = st !== "Enabled";
  $("act-rotate").disabled = st !== "Enabled";
  $("act-schedule").disabled = st === "PendingDeletion";
  $("act-cancel").disabled = st !== "PendingDeletion";
  $("impact").classList.add("hidden");
  $("policy-text").value = typeof k.Policy === "string" ? k.Policy : "";
  $("policy-error").classList.add("hidden");
  $("policy-ok").classList.add("hidden");
}

async function keyAction(path, extra) {
  try {
    await api("POST", path, Object.assign({ id: S.key.KeyId }, extra || {}));
    await loadKey(S.key.KeyId);
  } catch (e) { notice(e.message); }
}

// Disable and schedule deletion first say what they make unreadable.
async function confirmWithImpact(what, path, extra) {
  notice("");
  let r;
  try { r = await api("GET", "/api/key/impact?id=" + encodeURIComponent(S.key.KeyId)); }
  catch (e) { notice(e.message); return; }
  const list = $("impact-list"); list.replaceChildren();
  if (r.Files === 0) {
    $("impact-text").textContent =
      `No file in the backing directories this keystore knows of has its data key under this key. ${what}?`;
  } else {
    const after = what === "Disable"
      ? "they cannot be opened until the key is enabled again (files already open keep working)"
      : "they become unreadable now, and for good once the waiting period ends, unless the deletion is cancelled";
    $("impact-text").textContent =
      `This key protects ${r.Files} files (${fmtBytes(r.Bytes)}): ${after}.`;
    for (const b of r.Backings) {
      list.append(el("li", {}, el("span", { class: "mono", text: b.Backing }),
        ` \u2014 ${b.Files} files, ${fmtBytes(b.Bytes)}`));
    }
  }
  S.pending = { path, extra };
  $("impact-confirm").textContent = what;
  $("impact").classList.remove("hidden");
}

async function savePolicy() {
  $("policy-error").classList.add("hidden");
  $("policy-ok").classList.add("hidden");
  try {
    await api("POST", "/api/key/policy", { id: S.key.KeyId, policy: $("policy-text").value });
    $("policy-ok").classList.remove("hidden");
  } catch (e) {
    const box = $("policy-error");
    box.textContent = (e.code ? e.code + ": " : "") + e.message;
    box.classList.remove("hidden");
  }
}

async function createKey(ev) {
  ev.preventDefault();
  try {
    const r = await api("POST", "/api/keys/create",
      { description: $("create-description").value, policy: $("create-policy").value });
    $("create-form").classList.add("hidden");
    $("create-description").value = ""; $("create-policy").value = "";
    location.hash = "#key/" + encodeURIComponent(r.KeyMetadata.KeyId);
  } catch (e) { notice(e.message); }
}

// ---- files ------------------------------------------------------------------

async function loadMounts() {
  const r = await api("GET", "/api/mounts");
  const body = clearBody($("mounts-table"));
  for (const m of r.Mounts) {
    if (m.Unavailable) {
      body.append(el("tr", {}, el("td", { class: "mono", text: m.MountPoint }),
        el("td", { colSpan: 6, text: "no answer: " + m.Unavailable })));
      continue;
    }
    body.append(el("tr", {},
      el("td", { class: "mono", text: m.MountPoint }),
      el("td", { class: "mono", text: m.Backing }),
      el("td", {}, el("span", { class: "mono", text: (m.KeyId || "-") + " " }), stateBadge(m.KeyState || "-")),
      el("td", { text: String(m.OpenFiles) }),
      el("td", { text: `${m.KeyCacheHits} / ${m.KeyCacheMisses}` }),
      el("td", { text: `${m.KeyServiceCalls} (${m.KeyServiceErrors})` }),
      el("td", { text: String(m.IoErrors) })));
  }
  if (!r.Mounts.length) body.append(el("tr", {}, el("td", { colSpan: 7, text: "no kmsfs mounts" })));
}

async function loadFiles(refresh) {
  const r = refresh ? await api("POST", "/api/files/refresh") : await api("GET", "/api/files");
  $("files-when").textContent = "surveyed " + fmtTime(r.SurveyedAt) + " (headers only; nothing decrypted)";
  const box = $("backings"); box.replaceChildren();
  if (!r.Backings.length) {
    box.append(el("p", { class: "summary", text: "This keystore knows of no backing directory yet (a mount or an import records one)." }));
  }
  for (const b of r.Backings) {
    const sec = el("div", { class: "backing" },
      el("h3", {}, el("span", { class: "mono", text: b.Backing })));
    if (b.Error) { sec.append(el("p", { class: "error", text: b.Error })); box.append(sec); continue; }
    sec.append(el("p", { class: "summary",
      text: `${b.Files} files, ${fmtBytes(b.Bytes)}; ${b.EmptyFiles} empty, ${b.NotKmsfsFiles} not kmsfs files, ` +
            `${b.UnreadableFiles} unreadable files, ${b.UnreadableDirectories} unreadable directories (${b.SurveyMillis} ms)` }));
    const t = el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, ...["Key", "State", "Material version", "Files", "Bytes"].map(h => el("th", { text: h })))),
      el("tbody"));
    for (const k of b.Keys) {
      t.tBodies[0].append(el("tr", {},
        el("td", { class: "mono" }, el("a", { href: "#key/" + encodeURIComponent(k.KeyId), text: k.KeyId })),
        el("td", {}, stateBadge(k.KeyState)),
        el("td", { text: String(k.KeyMaterialVersion) }),
        el("td", { text: String(k.Files) }),
        el("td", { text: fmtBytes(k.Bytes) })));
    }
    sec.append(t);
    box.append(sec);
  }
  await loadMounts();
  S.mountsTimer = setInterval(() => loadMounts().catch(e => notice(e.message)), 2000);
}

// ---- trail ------------------------------------------------------------------

function trailQuery(extra) {
  const q = new URLSearchParams(extra);
  const add = (k, id) => { const v = $(id).value.trim(); if (v) q.set(k, v); };
  add("key", "f-key"); add("user", "f-user"); add("event", "f-event");
  add("outcome", "f-outcome"); add("source", "f-source");
  for (const [k, id] of [["since", "f-since"], ["until", "f-until"]]) {
    const v = $(id).value;
    if (v) q.set(k, String(Math.floor(Date.parse(v + "Z") / 1000)));
  }
  return q;
}

function trailRow(r, fresh) {
  const refused = r.Result !== "ok";
  const user = r.User ? `${r.User}(${r.Uid})` : String(r.Uid ?? "-");
  const proc = r.Process ? `${r.Process}[${r.Pid}]` : (r.Pid != null ? `[${r.Pid}]` : "-");
  const result = el("td", { class: refused ? "result-refused" : "result-ok", text: r.Result });
  if (r.Message) result.title = r.Message;
  const key = r.Key ? el("a", { href: "#key/" + encodeURIComponent(r.Key), text: r.Key.slice(0, 8) + "\u2026", title: r.Key }) : "-";
  const path = (r.Path || "") + (r.Cached ? " (cached)" : "");
  return el("tr", { class: fresh ? "fresh" : "", "data-event": r.Event || "", "data-result": r.Result, "data-key": r.Key || "" },
    el("td", { class: "mono", text: r.Time }), el("td", { text: r.Event }), el("td", { text: user }),
    el("td", { text: r.Source || "-" }), el("td", { class: "mono", text: proc }),
    el("td", { class: "mono" }, key), result, el("td", { class: "mono", text: path }));
}

async function trailPage(older) {
  const extra = { limit: 100 };
  if (older) extra.before = S.trailOlder;
  const body = $("trail-table").tBodies[0];
  if (!older) body.replaceChildren();
  let shown = 0;
  // A filter that matches little: keep going back (each answer reads a bounded part).
  for (let round = 0; round < 20; round++) {
    const r = await api("GET", "/api/trail?" + trailQuery(extra));
    if (!older && round === 0) S.trailHead = r.Head;
    for (const row of r.Rows) body.append(trailRow(row, false));
    shown += r.Rows.length;
    S.trailOlder = r.Older;
    if (shown >= 100 || !r.Older) break;
    extra.before = r.Older;
  }
  $("trail-older").disabled = !S.trailOlder;
  $("trail-status").textContent = S.trailOlder ? "" : "start of the trail";
}

async function trailPoll() {
  if (!$("f-live").checked || !S.trailHead) return;
  const r = await api("GET", "/api/trail?" + trailQuery({ after: S.trailHead, limit: 500 }));
  S.trailHead = r.Head;
  const body = $("trail-table").tBodies[0];
  for (const row of r.Rows) body.prepend(trailRow(row, true));
}

function showVerify(v) {
  const st = $("verify-state"); const d = $("verify-detail");
  if (!v || v.Running) { st.textContent = "verifying\u2026"; st.className = "badge"; d.textContent = ""; return false; }
  if (v.Error) { st.textContent = "cannot verify"; st.className = "badge bad"; d.textContent = v.Error; return true; }
  st.textContent = v.Valid ? "trail verifies" : "trail BROKEN";
  st.className = "badge " + (v.Valid ? "good" : "bad");
  let text = `${v.Records} records in ${v.Files} files, ${v.DigestsVerified} signed digests, ` +
             `signed through record ${v.SignedThrough}; checked ${fmtTime(v.CheckedAt)} in ${v.Millis} ms`;
  if (v.ProblemCount) text += `; ${v.ProblemCount} problems, first: ${v.Problems[0].File}:${v.Problems[0].Line}: ${v.Problems[0].Problem}`;
  if (v.Notes && v.Notes.length) text += "; " + v.Notes.join("; ");
  d.textContent = text;
  return true;
}

async function pollVerify() {
  for (let i = 0; i < 600; i++) {
    const v = await api("GET", "/api/trail/verify");
    if (showVerify(v) || location.hash !== "#trail") return;
    await new Promise(r => setTimeout(r, 1000));
  }
}

async function loadTrail() {
  await trailPage(false);
  S.trailTimer = setInterval(() => trailPoll().catch(e => notice(e.message)), 1000);
  pollVerify().catch(e => notice(e.message));
}

// ---- start ------------------------------------------------------------------

async function start() {
  const s = await api("GET", "/api/session");
  S.csrf = s.csrf;
  $("who").textContent = `${s.user || "uid " + s.uid} \u00b7 ${s.keystore}`;
  for (const op of s.operations) $("f-event").append(el("option", { text: op, value: op }));

  $("logout").addEventListener("click", async () => { await api("POST", "/api/logout"); location.reload(); });
  let typing = null;
  $("keys-q").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { S.keysOffset = 0; loadKeys().catch(e => notice(e.message)); }, 200);
  });
  $("keys-state").addEventListener("change", () => { S.keysOffset = 0; loadKeys().catch(e => notice(e.message)); });
  $("keys-prev").addEventListener("click", () => { S.keysOffset = Math.max(0, S.keysOffset - S.keysLimit); loadKeys(); });
  $("keys-next").addEventListener("click", () => { S.keysOffset += S.keysLimit; loadKeys(); });
  $("keys-create-open").addEventListener("click", () => $("create-form").classList.toggle("hidden"));
  $("create-cancel").addEventListener("click", () => $("create-form").classList.add("hidden"));
  $("create-form").addEventListener("submit", createKey);

  $("act-enable").addEventListener("click", () => keyAction("/api/key/enable"));
  $("act-rotate").addEventListener("click", () => keyAction("/api/key/rotate"));
  $("act-cancel").addEventListener("click", () => keyAction("/api/key/cancel-deletion"));
  $("act-disable").addEventListener("click", () => confirmWithImpact("Disable", "/api/key/disable"));
  $("act-schedule").addEventListener("click", () =>
    confirmWithImpact("Schedule deletion", "/api/key/schedule-deletion", { days: Number($("act-days").value) }));
  $("impact-cancel").addEventListener("click", () => { $("impact").classList.add("hidden"); S.pending = null; });
  $("impact-confirm").addEventListener("click", async () => {
    const p = S.pending; S.pending = null;
    $("impact").classList.add("hidden");
    if (p) await keyAction(p.path, p.extra);
  });
  $("policy-save").addEventListener("click", savePolicy);

  $("files-refresh").addEventListener("click", () => { stopTimers(); loadFiles(true).catch(e => notice(e.message)); });

  $("trail-filters").addEventListener("submit", ev => { ev.preventDefault(); trailPage(false).catch(e => notice(e.message)); });
  $("trail-older").addEventListener("click", () => trailPage(true).catch(e => notice(e.message)));
  $("verify-run").addEventListener("click", async () => {
    showVerify({ Running: true });
    try { showVerify(await api("POST", "/api/trail/verify")); } catch (e) { notice(e.message); }
  });

  window.addEventListener("hashchange", route);
  await route();
  document.body.setAttribute("data-ready", "1");
}

document.addEventListener("DOMContentLoaded", () => { start().catch(e => notice(e.message)); });
