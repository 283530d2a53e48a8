// CBEC Gateway operators' console. Vanilla JS, no build step. Every value from the server goes into the
// page through textContent / DOM attributes (never innerHTML), so data cannot inject markup.
"use strict";

(() => {
  const API = "/ops/api";
  const KIND_ZH = { order: "订单", payment: "支付单", waybill: "运单", inventory: "清单", cancel: "撤销申请单",
    refund: "退货申请单", receipt: "回执", delivery: "入库明细单" };
  const DOC_ZH = { CEB311: "订单", CEB411: "支付单", CEB511: "运单", CEB621: "清单" };
  const APP_TYPE = { "1": "new 新增", "2": "change 变更", "3": "delete 删除" };
  const STATE_ZH = { mismatched: "不一致", incomplete: "待补齐", matched: "已匹配" };
  const CUSTOMS_ZH = { pending: "未申报", declared: "已申报", accepted: "已受理", released: "已放行", cancelled: "已撤销",
    rejected: "被拒", failed: "发送失败" };
  const HOLD_WAITS = { matched: "matched 对碰一致", order: "order receipt 订单回执", payment: "payment receipt 支付单回执",
    waybill: "waybill receipt 运单回执" };
  const FORWARD_ZH = { held: "暂缓", queued: "待发送", sent: "已发送", receipted: "已回执", rejected: "被拒",
    failed: "发送失败", unsent: "未发送" };
  // why a document is unsent (gateway.forward.unsent_because)
  const UNSENT_ZH = { withdrawn: "发送前已撤回 withdrawn before it was sent", replaced: "发送前已被替换 replaced before it was sent" };
  // customs' tax bill status (CEB816/818, gateway.taxbills.STATUS_NAMES)
  const TAX_STATUS_ZH = { "1": "已生成", "2": "已汇总", "3": "已作废" };
  // a warehouse's statuses of an order (adapters/warehouse.py CALLBACK_STATUSES); the last two end it
  const WAREHOUSE_ZH = { accepted: "已接单", received: "已入库", picked: "已拣货", shipped: "已发货", delivered: "已签收",
    rejected: "已拒绝", cancelled: "已取消" };
  const WAREHOUSE_ENDED = new Set(["rejected", "cancelled"]);
  const TAXES = [["customsTax", "关税"], ["valueAddedTax", "增值税"], ["consumptionTax", "消费税"], ["total", "合计"]];

  const state = {
    session: null,
    listSeq: 0, // the list's loads, in the order asked: an answer to one a later one overtook is dropped
    counts: null,
    queuedTotal: null,
    deadTotal: null,
    deadNewest: null,
    deadOffset: null, // where the dead letters' next page starts
    refusedNewest: null,
    refusedCursor: null,
    pendingCode: null, // the consignor whose inventories awaiting their summary the panel shows ("": every one)
    pendingCursor: null,
    pendingPages: 0, // pages the panel shows: it follows the feed while it shows one
    pendingReadAt: 0,
    pendingTimer: null,
    awaitingAt: undefined, // the feed's awaiting_at last seen
    questionsSeen: undefined, // the feed's newest question and answer to one, and the open ones' count, last seen
    unmatchedSeen: undefined, // the feed's newest unmatched receipt and the open ones' count, last seen
    warehouseNewest: {},
    cursor: null,
    listKey: "",
    listParams: null,
    listAsked: null, // the filters of the latest list load asked from the form (listParams: of the list on screen)
    listFormDue: false, // the list load scheduled reads the form (a live reload meanwhile does not replace it)
    listTimer: null,
    seriesAt: 0,
    awaited: null,
    awaitedCursor: null,
    view: "overview",
    shipmentKey: null,
    openedFrom: null, // the hash of the shipment page shown, to return the focus to its link
    returnFocus: null, // the href of the list's link to focus once the list is rendered again
    listScroll: 0, // where the overview was scrolled when a shipment page was opened
    listStale: null, // while a shipment page is shown: "live" once the list would have reloaded, "form" refiltered
    alerts: { database: null, signing: null }, // what the header's banner says, one line each
    feedRetries: 0, // the live feed's connections refused in a row (its reconnection's backoff)
  };

  // --- small DOM helpers ---

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const $ = (id) => document.getElementById(id);
  const pad = (n) => String(n).padStart(2, "0");

  function fmtTime(iso, withDate = true) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withDate ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}` : time;
  }

  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  const fmtNum = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));

  function toast(text, bad = false) {
    const t = $("toast");
    t.textContent = text;
    t.className = bad ? "toast bad" : "toast";
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  // --- server calls ---

  async function call(path, options = {}) {
    const opts = { credentials: "same-origin", headers: {}, ...options };
    if (opts.method && opts.method !== "GET") {
      opts.headers = { ...opts.headers, "X-CSRF-Token": state.session ? state.session.csrf : "" };
    }
    const resp = await fetch(path, opts);
    if (resp.status === 401) {
      window.location.assign("/ops/login");
      throw new Error("signed out");
    }
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const title = body && body.error ? body.error.title : resp.statusText;
      throw new Error(`${resp.status}: ${title}`);
    }
    return body;
  }

  // --- KPIs ---

  function setKpi(id, value) {
    const el = $(id);
    const text = fmtNum(value);
    if (el.textContent !== text) {
      const changed = el.textContent !== "–";
      el.textContent = text;
      if (changed) {
        const card = el.closest(".kpi");
        card.classList.add("flash");
        setTimeout(() => card.classList.remove("flash"), 1200);
      }
    }
  }

  function renderCounts(shipments) {
    state.counts = shipments;
    setKpi("kpi-mismatched", shipments.by_state.mismatched);
    setKpi("kpi-incomplete", shipments.by_state.incomplete);
    setKpi("kpi-matched", shipments.by_state.matched);
    setKpi("kpi-total", shipments.total);
    // each chip lists its shipments (any reconciliation state): the rejected and failed ones are found from here
    const chips = Object.entries(shipments.by_customs_status).sort((a, b) => b[1] - a[1]).map(([status, n]) =>
      h("a", { class: `chip customs-${status}`, href: "#/", "data-customs-filter": status,
        title: `List the shipments customs status ${status} 列出海关状态为${CUSTOMS_ZH[status] || status}的订单`,
        onclick: (ev) => { ev.preventDefault(); showList({ state: "any", customs_status: status }); } },
      `${status} ${CUSTOMS_ZH[status] || ""}`, h("b", { text: fmtNum(n) })));
    $("customs-chips").replaceChildren(...chips);
  }

  // --- queue ---

  // The oldest wait as the server measured it, counted on from when it arrived (no client clock involved);
  // re-rendered every few seconds, since the feed only says when the figures change.
  function renderAwaited(awaited) {
    if (awaited) {
      const before = state.awaited ? state.awaited.count : null;
      state.awaited = { count: Number(awaited.count || 0), wait: awaited.oldest_wait_s, at: Date.now() };
      // the list, when open, follows the figures: a receipt came, or another document waits now
      if ($("awaited-details").open && before !== null && before !== state.awaited.count) {
        loadAwaitedList().catch(() => {});
      }
    }
    const a = state.awaited;
    if (!a) return;
    const age = a.count && a.wait !== null && a.wait !== undefined ? a.wait + (Date.now() - a.at) / 1000 : null;
    $("awaited").textContent = a.count ? `${fmtNum(a.count)} · oldest ${fmtAge(age)}` : "none 无";
    $("awaited").closest(".awaited").classList.toggle("warn", age !== null && age > 600);
  }

  function renderQueue(endpoints, deadTotal, awaited, deadNewest) {
    renderAwaited(awaited);
    const rows = endpoints.map((e) => h("tr", { class: e.circuit === "open" ? "bad" : (e.dead ? "warn" : null) },
      h("td", { class: "mono", text: e.endpoint }),
      h("td", { class: "num", text: fmtNum(e.queued) }),
      h("td", { class: "num", text: fmtAge(e.oldest_queued_age_s) }),
      h("td", { class: "num", text: fmtNum(e.running) }),
      h("td", { class: "num", text: fmtNum(e.dead) }),
      h("td", {}, h("span", { class: `circuit ${e.circuit || ""}`, text: e.circuit || "—" }),
        // a webhook endpoint's sellers whose own URL keeps failing: their events wait, the others' go on
        (e.paused_sellers || []).length ? h("div", { class: "paused-sellers",
          text: "paused 暂停: " + e.paused_sellers.map((p) => `${p.seller} (${fmtNum(p.waiting)})`).join(", ") }) : null)));
    $("queue-table").tBodies[0].replaceChildren(...rows);
    $("queue-empty").hidden = endpoints.length > 0;
    const queued = endpoints.reduce((sum, e) => sum + Number(e.queued || 0), 0);
    setKpi("kpi-queued", queued);
    setKpi("kpi-dead", deadTotal);
    // one replayed and another dead at once leave the count as it was: the newest death tells them apart
    const deadChanged = state.deadTotal !== null &&
      (state.deadTotal !== deadTotal || (deadNewest !== undefined && state.deadNewest !== deadNewest));
    state.queuedTotal = queued;
    state.deadTotal = deadTotal;
    if (deadNewest !== undefined) state.deadNewest = deadNewest;
    return deadChanged;
  }

  // The documents behind the figure, the longest waiting first: which to chase with customs.
  function renderAwaitedList(items, append) {
    const rows = items.map((d) => h("tr", { class: d.receipt_overdue ? "warn" : null, "data-document": d.document_id },
      h("td", { class: "when", text: fmtTime(d.first_sent_at) }),
      h("td", { class: "num", text: `${fmtAge(d.wait_s)}${d.receipt_overdue ? " ⚠" : ""}`,
        title: d.receipt_overdue ? "receipt overdue 回执超时" : null }),
      h("td", {}, h("div", { text: `${d.message_type} ${KIND_ZH[d.kind] || d.kind}` }),
        h("div", { class: "mono", text: Object.values(d.keys || {}).join(" / ") })),
      h("td", {}, d.orderNo ? shipmentLink(d.ebpCode, d.orderNo) : h("span", { class: "muted", text: "—" })),
      h("td", { class: "num", text: fmtNum(d.repushes || 0) })));
    const body = $("awaited-table").tBodies[0];
    if (append) body.append(...rows); else body.replaceChildren(...rows);
    $("awaited-empty").hidden = body.rows.length > 0;
  }

  async function loadAwaitedList(append = false) {
    const params = new URLSearchParams();
    if (append && state.awaitedCursor) params.set("cursor", state.awaitedCursor);
    const page = await call(`${API}/queue/awaited?${params}`);
    renderAwaitedList(page.items, append);
    state.awaitedCursor = page.next_cursor;
    $("awaited-more").hidden = !page.next_cursor;
  }

  function attemptsTable(history) {
    return h("table", { class: "data" },
      h("thead", {}, h("tr", {}, ["Round", "#", "Started", "Outcome", "ms", "Error"].map((t) => h("th", { text: t })))),
      h("tbody", {}, history.map((a) => h("tr", { class: a.outcome === "ok" ? null : (a.outcome === "replayed" ? null : "warn") },
        h("td", { text: a.replay }), h("td", { text: a.attempt }), h("td", { text: fmtTime(a.started_at) }),
        h("td", { text: a.outcome || "running" }), h("td", { class: "num", text: a.duration_ms ?? "" }),
        h("td", {}, h("span", { class: "error-text", text: a.error ? a.error.split("\n").slice(-2).join(" ") : "" }))))));
  }

  function renderDead(dead, append, total) {
    const canReplay = state.session && state.session.may_replay;
    const rows = dead.map((job) => h("tr", { "data-job": job.id },
      h("td", { class: "mono", text: `#${job.id}` }),
      h("td", { class: "mono", text: job.endpoint }),
      // the documents it delivers: its later versions went on without it (the queue's ordering keys)
      h("td", {}, h("div", { text: job.kind }),
        h("div", { class: "mono", text: (job.ordering_keys || []).join(" ") })),
      h("td", {}, (job.shipments || []).length
        ? job.shipments.map((sh) => h("div", {}, shipmentLink(sh.ebpCode, sh.orderNo)))
        : h("span", { class: "muted", text: "—" })),
      h("td", { class: "when", text: fmtTime(job.finished_at) }),
      h("td", {}, h("div", { text: job.dead_reason || "" }), h("div", { class: "error-text", text: job.last_error || "" })),
      h("td", {}, h("details", { class: "history", "data-keep": `job ${job.id}` },
        h("summary", { text: `${job.history.length} recorded` }), attemptsTable(job.history))),
      h("td", {}, h("button", {
        type: "button", class: "btn danger replay", disabled: !canReplay,
        title: canReplay ? "Queue the job again 重新发送" : "Operators and admins only 仅限操作员和管理员",
        "aria-label": `Replay job #${job.id} 重发`,
        onclick: (ev) => replay(job.id, ev.currentTarget),
      }, "Replay 重发"))));
    const body = $("dead-table").tBodies[0];
    if (append) body.append(...rows); else keepingOpen(body, () => body.replaceChildren(...rows));
    $("dead-empty").hidden = body.rows.length > 0;
    $("dead-count").textContent = fmtNum(total);
  }

  // The endpoints the dead letters may be of: the queue's (the configured ones and any holding jobs), the one chosen
  // kept.
  function renderDeadEndpoints(endpoints) {
    const select = $("dead-endpoint");
    const chosen = select.value;
    const names = [...new Set([...endpoints.map((e) => e.endpoint), ...(chosen ? [chosen] : [])])].sort();
    if (names.join("\n") === [...select.options].slice(1).map((o) => o.value).join("\n")) return;
    select.replaceChildren(select.options[0], ...names.map((n) => h("option", { value: n, text: n })));
    select.value = chosen;
  }

  // A page of 50 dead letters (of the endpoint chosen), newest first; "Load more" the next. A reload (the feed saw the
  // dead letters change, a replay) keeps as many rows as were loaded, up to 200, as the list does.
  async function loadDead({ append = false, keep = false } = {}) {
    const shown = $("dead-table").tBodies[0].rows.length;
    const params = new URLSearchParams();
    if ($("dead-endpoint").value) params.set("endpoint", $("dead-endpoint").value);
    if (append) params.set("offset", String(state.deadOffset || 0));
    else if (keep && shown > 50) params.set("limit", String(Math.min(shown, 200)));
    const page = await call(`${API}/queue/dead?${params}`);
    renderDead(page.items, append, page.total);
    state.deadOffset = page.next_offset;
    $("dead-more").hidden = page.next_offset === null || page.next_offset === undefined;
  }

  async function loadQueue() {
    const body = await call(`${API}/queue`);
    renderQueue(body.endpoints, body.dead_total, body.receipts_awaited, body.dead_newest);
    renderDeadEndpoints(body.endpoints);
    await loadDead({ keep: true });
  }

  // --- refused messages ---

  function renderRefused(items, append) {
    const rows = items.map((r) => h("tr", { "data-rejection": r.id },
      h("td", { class: "when", text: fmtTime(r.received_at) }),
      h("td", { class: "mono", text: r.submitter }),
      h("td", {}, h("div", { text: r.message_type || "—" }), h("div", { class: "mono", text: r.guid || "" })),
      h("td", { class: "num", text: r.http_status }),
      h("td", {}, ...(r.issues || []).slice(0, 3).map((i) => h("div", { class: "issue" },
        h("span", { class: "code", text: i.code }), " ", h("span", { class: "mono", text: i.path || "" }),
        h("div", { class: "error-text", text: i.message || "" }))),
      (r.issues || []).length > 3 ? h("div", { class: "muted", text: `+${r.issues.length - 3} more 更多` }) : null),
      h("td", {}, sentButton(r.id))));
    const body = $("refused-table").tBodies[0];
    if (append) body.append(...rows); else keepingOpen(body, () => body.replaceChildren(...rows));
    $("refused-empty").hidden = body.rows.length > 0;
  }

  // --- panels kept open ---

  // Parts of the page are drawn anew as the feed reports changes (the shipment page on each change of its shipment,
  // the refused messages and the dead letters on theirs). What the operator opened there stays open: each panel's
  // control carries data-keep, a stable id (an XML view: its message's and document's guids; a transmission's or dead
  // letter's history: its job id; what a refused message sent: its id), and ``draw`` is wrapped by keepingOpen, which
  // opens the same panels in the new drawing — a revealed one moved over as it was (indented or as stored), not read
  // again — and puts the keyboard's focus back on the same control (or inside the panel moved over).
  const reveals = new WeakMap(); // a revealButton → { shown(): what it shows or null, show(el) }

  function keepingOpen(root, draw) {
    const open = new Map();
    for (const el of root.querySelectorAll("[data-keep]")) {
      const shown = el.tagName === "DETAILS" ? el.open : (reveals.has(el) && reveals.get(el).shown());
      if (shown) open.set(el.dataset.keep, shown);
    }
    const active = root.contains(document.activeElement) ? document.activeElement : null;
    const holder = active ? active.closest("[data-keep]") : null;
    draw();
    const focusKey = holder ? holder.dataset.keep : null;
    let focus = null;
    for (const el of root.querySelectorAll("[data-keep]")) {
      const key = el.dataset.keep;
      if (key === focusKey && !focus) focus = el.tagName === "DETAILS" ? el.querySelector("summary") : el;
      const shown = open.get(key);
      if (!shown) continue;
      if (el.tagName === "DETAILS") el.open = true;
      else if (reveals.has(el)) { reveals.get(el).show(shown); open.delete(key); } // one place for what it showed
    }
    if (!active || root.contains(document.activeElement)) return;
    if (active.isConnected) active.focus({ preventScroll: true }); // inside a panel moved over
    else if (focus) focus.focus({ preventScroll: true });
  }

  // A button that shows, and on a second click hides, what ``build`` reads from the server when asked for, put in
  // the page by ``place`` (the XML of a message, what a refused message sent).
  // ``name``: what it shows, for a screen reader (a page holds many buttons labelled alike); ``keep``: its data-keep.
  function revealButton(cls, label, name, keep, build, place) {
    let shown = null;
    const btn = h("button", { type: "button", class: `btn ghost ${cls}`, text: label, "aria-label": name,
      "aria-expanded": "false", "data-keep": keep });
    const show = (el) => {
      shown = el;
      place(btn, el);
      btn.setAttribute("aria-expanded", "true");
    };
    reveals.set(btn, { shown: () => shown, show });
    btn.addEventListener("click", async () => {
      if (shown) { shown.remove(); shown = null; btn.setAttribute("aria-expanded", "false"); return; }
      try {
        show(await build());
      } catch (err) { toast(err.message, true); }
    });
    return btn;
  }

  // What was sent, as received (the first 64 KiB), under the refusal's row.
  function sentButton(id) {
    return revealButton("sent-toggle", "Sent 原文", `What refused message #${id} sent 原文`, `sent ${id}`, async () => {
      const body = await call(`${API}/rejections/${encodeURIComponent(id)}`);
      const note = body.raw_truncated ? ` · the first 64 KiB of ${fmtNum(body.raw_size)} bytes` : "";
      return h("tr", { class: "sent" }, h("td", { colspan: 6 }, h("div", { class: "sub", text: `as received${note}` }),
        h("pre", { class: "xml", text: indentXml(body.raw) })));
    }, (btn, el) => btn.closest("tr").after(el));
  }

  async function loadRefused(append = false) {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData($("refused-filters"))) {
      if (String(value).trim()) params.set(name, String(value).trim());
    }
    if (append && state.refusedCursor) params.set("cursor", state.refusedCursor);
    const page = await call(`${API}/rejections?${params}`);
    renderRefused(page.items, append);
    if (!append && page.items.length) state.refusedNewest = Math.max(state.refusedNewest ?? 0, page.items[0].id);
    state.refusedCursor = page.next_cursor;
    $("refused-more").hidden = !page.next_cursor;
  }

  // A panel listing one of its views page by page, newest first (GET /ops/api/<path>?view=&cursor=): its view buttons
  // (data-<name>-view), #<name>-more, and render(items, append) filling its table. A hidden panel reads nothing. A live
  // reload (``live``: the feed saw its rows change) waits while the operator is writing why a row is closed (a close
  // form open in it), and comes once the form is gone.
  function viewList(name, path, view, render) {
    const list = { view, cursor: null, stale: false };
    list.load = async (append = false, { live = false } = {}) => {
      if ($(`${name}-panel`).hidden) return;
      if (live && $(`${name}-table`).querySelector("form.close-form")) { list.stale = true; return; }
      list.stale = false;
      // ``path`` a function of the view: a panel whose views read different lists ([path, the view it asks for])
      const [where, asked] = typeof path === "function" ? path(list.view) : [path, list.view];
      const params = new URLSearchParams({ view: asked });
      if (append && list.cursor) params.set("cursor", list.cursor);
      const page = await call(`${API}/${where}?${params}`);
      render(page.items, append);
      list.cursor = page.next_cursor;
      $(`${name}-more`).hidden = !page.next_cursor;
    };
    list.show = (shown) => {
      list.view = shown;
      for (const b of document.querySelectorAll(`[data-${name}-view]`)) {
        const on = b.dataset[`${name}View`] === shown;
        b.classList.toggle("primary", on);
        b.setAttribute("aria-pressed", String(on));
      }
      return list.load();
    };
    list.wire = () => {
      for (const b of document.querySelectorAll(`[data-${name}-view]`)) {
        b.addEventListener("click", () => list.show(b.dataset[`${name}View`]).catch((e) => toast(e.message, true)));
      }
      $(`${name}-more`).addEventListener("click", () => list.load(true).catch((e) => toast(e.message, true)));
    };
    return list;
  }

  // --- warehouse callbacks needing a look: on no shipment, orders the warehouse refused or cancelled, and the cancels
  // the gateway asked that the warehouse went on after, refused, or has not confirmed in time ---

  const UNLINKED_BECAUSE = {
    unknown_reference: "its reference names no document the gateway holds 关联报文不存在",
    order_id_not_ours: "not the orderId the gateway gave that document's order 订单号不符",
  };
  const WAREHOUSE_EMPTY = {
    unlinked: "Every callback is on its shipment. 仓库回执均已关联",
    refused: "No order refused or cancelled. 无拒绝或取消的仓库订单",
    cancels: "No cancel needs a look. 取消请求均无异常",
  };
  // why a cancel needs a look (gateway.outbox.CANCEL_FLAGS), the gravest first
  const CANCEL_WHY = {
    progress_after_cancel: "went on after the cancel 取消后仍有进展",
    refused: "refused the cancel 拒绝取消",
    unconfirmed: "not confirmed in time 取消未确认",
  };
  const WAREHOUSE_HEADS = {
    callbacks: ["Received 时间", "Warehouse 仓库", "Order 订单", "Status 状态", "Reference 关联报文",
      "Shipment / why 订单/原因"],
    cancels: ["Asked 请求取消", "Endpoint 仓库", "Order 订单", "Why a look 原因", "Cancel 取消请求",
      "Shipment 订单", ""],
  };

  function shipmentLink(ebpCode, orderNo) {
    return h("a", { class: "mono", href: `#/shipment?${new URLSearchParams({ ebpCode: ebpCode || "", orderNo })}`,
      text: orderNo });
  }

  // An inbound order's delivery (a site's CEB711): its B/L and parcels, linked through the shipments of those the
  // gateway holds, whose pages show the delivery.
  function deliveryLinks(d) {
    const shown = d.shipments.slice(0, 3);
    return h("div", { class: "delivery", "data-delivery": d.message_guid },
      h("div", { text: `Delivery 入库明细单 · B/L ${d.billNo || "—"} · ${d.listed} parcels 件` }),
      ...shown.map((s) => h("div", {}, shipmentLink(s.ebpCode, s.orderNo))),
      d.shipments.length > shown.length
        ? h("div", { class: "muted", text: `+${d.shipments.length - shown.length} more 更多` }) : null,
      d.shipments.length ? null : h("div", { class: "muted", text: "none of its parcels is held 无已知包裹" }),
      h("div", { class: "muted mono", text: `message ${d.message_guid}` }));
  }

  // where an order's goods belong: its shipment, the delivery an inbound order was made from, or why none is known
  function orderPlace(item, why) {
    if (item.orderNo) return shipmentLink(item.ebpCode, item.orderNo);
    if (item.delivery) return deliveryLinks(item.delivery);
    return h("span", { text: why || "—" });
  }

  function callbackRow(c) {
    const ref = c.reference || {};
    return h("tr", { "data-callback": c.id, class: c.after_cancel ? "bad" : null },
      h("td", { class: "when", text: fmtTime(c.received_at) }),
      h("td", { class: "mono", text: c.submitter }),
      h("td", {}, h("div", { class: "mono", text: c.order_id }),
        h("div", { class: "muted", text: `${c.direction} · ${c.warehouse_order_no}` })),
      h("td", {}, h("div", { text: `${c.status} ${WAREHOUSE_ZH[c.status] || ""}`.trim() }),
        h("div", { class: "muted", text: c.occurred_at }),
        c.after_cancel ? h("div", { class: "error-text", text: "⚠ after the cancel was asked 取消请求之后" }) : null,
        c.reason ? h("div", { class: "error-text", text: c.reason }) : null),
      h("td", {}, h("div", { text: typeof ref.messageType === "string" ? ref.messageType : "—" }),
        h("div", { class: "mono", text: typeof ref.guid === "string" ? ref.guid : "" })),
      h("td", {}, orderPlace(c, UNLINKED_BECAUSE[c.unlinked_because] || c.unlinked_because)));
  }

  // what became of a cancel: taken or refused (the warehouse's answer), confirmed or not
  function cancelAnswer(c) {
    const a = c.answer || {};
    if (c.refused_at) {
      return `refused 拒绝 ${fmtTime(c.refused_at)} · HTTP ${a.status} ${a.code || ""} ${a.reason || ""}`.trim();
    }
    if (!c.delivered_at) return "not delivered yet 尚未送达";
    return `delivered 已送达 ${fmtTime(c.delivered_at)} · ` +
      (c.confirmed_at ? `confirmed 已确认 ${fmtTime(c.confirmed_at)}` : "not confirmed 未确认");
  }

  function cancelRow(c) {
    return h("tr", { "data-cancel": c.id, class: c.needs_look ? "bad" : null },
      h("td", { class: "when", text: fmtTime(c.requested_at) }),
      h("td", { class: "mono", text: c.endpoint }),
      h("td", {}, h("div", { class: "mono", text: c.order_id }),
        h("div", { class: "muted", text: `${c.direction} · ${c.warehouse_order_no || "—"} · ` +
          (c.status ? `${c.status} ${WAREHOUSE_ZH[c.status] || ""}`.trim() : "nothing reported 无回执") })),
      h("td", {}, ...c.flags.map((f) => h("div", { class: "error-text", text: CANCEL_WHY[f] || f })),
        c.progress_status ? h("div", { text: `${c.progress_status} ${WAREHOUSE_ZH[c.progress_status] || ""} · ` +
          `${fmtTime(c.progress_at)}` }) : null),
      h("td", {}, h("div", { text: c.reason || "—" }), h("div", { class: "muted", text: cancelAnswer(c) })),
      h("td", {}, orderPlace(c)),
      h("td", {}, c.closed_at ? closedNote(c)
        : closeControl("warehouse-cancels", c.id, `warehouse cancel #${c.id}`, warehouse)));
  }

  function renderWarehouse(items, append) {
    const cancels = warehouse.view === "cancels";
    const table = $("warehouse-table");
    const heads = WAREHOUSE_HEADS[cancels ? "cancels" : "callbacks"];
    if (table.tHead.rows[0].cells.length !== heads.length || table.dataset.rows !== String(cancels)) {
      table.tHead.rows[0].replaceChildren(...heads.map((t) => h("th", { text: t })));
      table.dataset.rows = String(cancels);
    }
    const rows = items.map(cancels ? cancelRow : callbackRow);
    const body = table.tBodies[0];
    if (append) body.append(...rows); else body.replaceChildren(...rows);
    $("warehouse-empty").textContent = WAREHOUSE_EMPTY[warehouse.view];
    $("warehouse-empty").hidden = body.rows.length > 0;
  }

  // the cancels' view reads the cancels that need a look; the others, the callbacks of their kind
  const warehouse = viewList("warehouse", (view) => view === "cancels" ? ["warehouse-cancels", "open"]
    : ["warehouse-callbacks", view], "unlinked", renderWarehouse);

  // --- closing what can never be settled: an unmatched receipt, a 179 question ---

  // The Close button of a row (operators and admins) and, once pressed, its form in the same cell: why it can never
  // be settled (one short line, required), sent to POST <path>/<id>/close with the page's CSRF token; done, the panel
  // (``list``) reads its page again and the row leaves the open view. ``name``: what it closes, for a screen reader.
  function closeControl(path, id, name, list) {
    const canClose = state.session && state.session.may_replay;
    const cell = h("div", { class: "close-control" });
    const button = h("button", {
      type: "button", class: "btn danger close", disabled: !canClose,
      title: canClose ? "It can never be settled: close it, saying why 无法处理，关闭并说明原因"
        : "Operators and admins only 仅限操作员和管理员",
      "aria-label": `Close ${name} 关闭`,
    }, "Close 关闭");
    const done = () => { if (list.stale) list.load().catch(() => {}); };
    button.addEventListener("click", () => {
      const reason = h("input", { name: "reason", required: true, maxlength: 200, autocomplete: "off",
        placeholder: "Why it can never be settled 关闭原因", "aria-label": `Why ${name} is closed 关闭原因` });
      const cancel = h("button", { type: "button", class: "btn ghost" }, "Cancel 取消");
      const submit = h("button", { type: "submit", class: "btn danger", "aria-label": `Close ${name} now 确认关闭` },
        "Close 关闭");
      const form = h("form", { class: "close-form" }, reason, submit, cancel);
      cancel.addEventListener("click", () => { form.remove(); button.hidden = false; button.focus(); done(); });
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        if (!reason.value.trim()) { reason.focus(); return; }
        submit.disabled = true;
        try {
          await call(`${API}/${path}/${encodeURIComponent(id)}/close`, { method: "POST",
            headers: { "Content-Type": "application/json" }, body: JSON.stringify({ reason: reason.value.trim() }) });
          toast(`${name} closed. 已关闭`);
          form.remove();
          await list.load();
        } catch (err) {
          toast(`Close failed: ${err.message}`, true);
          submit.disabled = false;
        }
      });
      button.hidden = true;
      cell.append(form);
      reason.focus();
    });
    cell.append(button);
    return cell;
  }

  // who closed it, when and why
  function closedNote(row) {
    return h("div", { class: "closed-note" }, h("div", { text: `Closed 已关闭 · ${row.closed_by} · ${fmtTime(row.closed_at)}` }),
      h("div", { class: "muted", text: row.close_reason }));
  }

  // --- customs receipts kept unmatched: customs' word on documents the gateway cannot find ---

  const UNMATCHED_EMPTY = {
    open: "Every receipt customs sent found its document. 海关回执均已匹配",
    closed: "No receipt was closed. 无已关闭回执",
  };

  function keyText(value) {
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function renderUnmatched(items, append) {
    const rows = items.map((r) => h("tr", { "data-receipt": r.id },
      h("td", { class: "when", text: fmtTime(r.received_at) }),
      h("td", {}, h("div", { text: r.message_type }), h("div", { class: "mono", text: r.doc_guid || "" })),
      h("td", {}, ...Object.entries(r.keys || {}).map(([k, v]) => h("div", {},
        h("span", { class: "muted", text: `${k} ` }), h("span", { class: "mono", text: keyText(v) })))),
      h("td", {}, h("div", { text: r.return_status === null || r.return_status === undefined ? "—" : r.return_status }),
        r.return_info ? h("div", { text: r.return_info }) : null,
        h("div", { class: "muted", text: fmtReturnTime(r.return_time) })),
      h("td", {}, h("div", { text: r.source || "—" }), h("div", { class: "mono", text: r.cop_msg_id || "" })),
      h("td", {}, r.closed_at ? closedNote(r)
        : closeControl("receipts/unmatched", r.id, `receipt #${r.id}`, unmatched))));
    const body = $("unmatched-table").tBodies[0];
    if (append) body.append(...rows); else body.replaceChildren(...rows);
    $("unmatched-empty").textContent = UNMATCHED_EMPTY[unmatched.view];
    $("unmatched-empty").hidden = body.rows.length > 0;
  }

  const unmatched = viewList("unmatched", "receipts/unmatched", "open", renderUnmatched);

  // --- customs' 179 questions for an order's payment data, and what became of each upload ---

  const QUESTIONS_EMPTY = {
    open: "Every question customs asked has been uploaded. 海关调取均已上传",
    closed: "No question was closed. 无已关闭调取",
    any: "Customs has asked about no order yet. 海关尚未调取",
  };

  // what the upload's column says: its state, then why (customs' answer, the job's last error)
  function questionStatus(q) {
    const job = q.job || {};
    if (q.state === "uploaded") return [`Uploaded 已上传 ${fmtTime(q.uploaded_at)}`, null];
    if (q.state === "refused") {
      return ["Refused by customs 海关拒收", q.answer ? `${q.answer.code} ${q.answer.message || ""}`.trim() : null];
    }
    if (job.state === "dead") return ["Given up 已放弃", job.last_error];
    if (!q.handed_over) {
      return ["Waiting for the platform's data 待平台提交支付数据",
        `POST /v1/payment-data · ${job.attempts || 0} attempts 次尝试`];
    }
    return ["Uploading 上传中", job.last_error];
  }

  function renderQuestions(items, append) {
    const canReplay = state.session && state.session.may_replay;
    const rows = items.map((q) => {
      const [status, why] = questionStatus(q);
      const job = q.job;
      return h("tr", { "data-question": q.id, "data-state": q.state, "data-closed": Boolean(q.closed_at) },
        h("td", { class: "when", text: fmtTime(q.received_at) }),
        h("td", { class: "mono", text: q.ebpCode }),
        h("td", {}, shipmentLink(q.ebpCode, q.orderNo)),
        h("td", { class: "mono", text: q.sessionID }),
        h("td", {}, q.closed_at ? closedNote(q) : null, h("div", { class: q.closed_at ? "muted" : null, text: status }),
          why ? h("div", { class: "muted", text: why }) : null),
        h("td", {}, job ? h("div", { class: "mono", text: `#${job.id} ${job.state}` }) : h("span", { text: "—" }),
          job && job.state === "dead" && !q.closed_at ? h("button", {
            type: "button", class: "btn danger replay", disabled: !canReplay,
            title: canReplay ? "Upload again 重新上传" : "Operators and admins only 仅限操作员和管理员",
            "aria-label": `Replay job #${job.id} 重发`,
            onclick: (ev) => replay(job.id, ev.currentTarget).then(() => questions.load()),
          }, "Replay 重发") : null),
        h("td", {}, q.state !== "uploaded" && !q.closed_at
          ? closeControl("payment-questions", q.id, `question #${q.id}`, questions) : null));
    });
    const body = $("questions-table").tBodies[0];
    if (append) body.append(...rows); else body.replaceChildren(...rows);
    $("questions-empty").textContent = QUESTIONS_EMPTY[questions.view];
    $("questions-empty").hidden = body.rows.length > 0;
  }

  const questions = viewList("questions", "payment-questions", "open", renderQuestions);

  // --- a consignor's export inventories awaiting their summary declaration (GET /v1/summaries/pending) ---

  // customs' returnTime (YYYYMMDDhhmmss and milliseconds) as the page writes times
  function fmtReturnTime(t) {
    const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})/.exec(t || "");
    return m ? `${m[1]}-${m[2]}-${m[3]} ${m[4]}:${m[5]}:${m[6]}` : (t || "—");
  }

  function renderPending(items, append) {
    const rows = items.map((p) => h("tr", { "data-invt-no": p.invtNo },
      h("td", { class: "when", text: fmtReturnTime(p.released_at) }),
      h("td", { class: "mono", text: p.invtNo }),
      h("td", { class: "mono", text: p.ebcCode }),
      h("td", {}, shipmentLink(p.ebpCode, p.orderNo)),
      h("td", { class: "mono", text: p.logisticsNo || "—" }),
      h("td", { text: p.ieDate || "—" }),
      h("td", { class: "mono", text: `${p.agentCode} / ${p.copNo}` })));
    const body = $("pending-table").tBodies[0];
    if (append) body.append(...rows); else body.replaceChildren(...rows);
    $("pending-table").hidden = body.rows.length === 0;
    $("pending-empty").textContent = state.pendingCode
      ? `Nothing awaits a summary of ${state.pendingCode}. 无待汇总清单`
      : "Nothing awaits a summary of any consignor. 无待汇总清单";
    $("pending-empty").hidden = body.rows.length > 0;
  }

  async function loadPending(append = false) {
    const params = new URLSearchParams(state.pendingCode ? { ebcCode: state.pendingCode } : {});
    if (append && state.pendingCursor) params.set("cursor", state.pendingCursor);
    if (!append) state.pendingReadAt = Date.now();
    const page = await call(`${API}/summaries/pending?${params}`);
    renderPending(page.items, append);
    state.pendingPages = append ? state.pendingPages + 1 : 1;
    state.pendingCursor = page.next_cursor;
    $("pending-more").hidden = !page.next_cursor;
  }

  // The feed says what awaits a summary may have changed (a release, a withdrawal, an application, customs' answer):
  // the panel, showing one page, reads it again — at most every 3 s however busy the zone, the last change included.
  // Once more pages are loaded it stays as read (the operator is reading down the list): Show reads it anew.
  function schedulePending() {
    if (state.pendingCode === null || state.pendingPages !== 1 || state.pendingTimer) return;
    const wait = Math.max(0, state.pendingReadAt + 3000 - Date.now());
    state.pendingTimer = setTimeout(() => {
      state.pendingTimer = null;
      if (state.pendingPages === 1) loadPending().catch(() => {});
    }, wait);
  }

  async function replay(jobId, button) {
    button.disabled = true;
    try {
      await call(`${API}/jobs/${encodeURIComponent(jobId)}/replay`, { method: "POST" });
      toast(`Job #${jobId} queued again. 已重新排队`);
      await loadQueue();
    } catch (err) {
      toast(`Replay failed: ${err.message}`, true);
      button.disabled = false;
    }
  }

  // --- findings ---

  function sideView(side) {
    if (!side) return h("span", { class: "side" }, h("span", { class: "val", text: "—" }));
    const value = side.value === null || side.value === undefined ? "(missing 缺失)" : side.value;
    return h("span", { class: "side", title: side.path || "" },
      h("span", { class: "doc", text: docLabel(side) }), h("span", { class: "val", text: value }));
  }

  function docLabel(side) {
    return `${side.doc}${DOC_ZH[side.doc] ? " " + DOC_ZH[side.doc] : ""}`;
  }

  // A finding whose sides hold the same value disagrees on nothing: what is wrong is elsewhere (recon.waybill_ambiguous:
  // the waybill carries an orderNo that several platforms use). "O1 ≠ O1" would read as nonsense, so it shows the
  // value once with the documents holding it, and its message says what is wrong. A lone right side (the ambiguous
  // waybill of a waybill-only shipment) is shown the same way rather than as "— ≠ O1".
  function sharedView(f, sides) {
    return h("div", { class: f.blocking === false ? "finding shared warning" : "finding shared", title: f.message || "" },
      h("span", { class: "field", text: f.field || f.code }),
      h("span", { class: "side" }, ...sides.map((s) => h("span", { class: "doc", title: s.path || "", text: docLabel(s) })),
        h("span", { class: "val", text: sides[0].value ?? "(missing 缺失)" })),
      h("span", { class: "code", text: f.code }),
      h("div", { class: "why", text: f.message || "" }));
  }

  // Findings whose two sides hold one value by what they say (an orderNo several platforms use): the value once.
  // Any other finding compares two values, even where the list's masking of ID numbers shows them alike.
  const SHARED_VALUE = new Set(["recon.waybill_ambiguous"]);

  function findingView(f) {
    const sides = [f.left, f.right].filter(Boolean);
    if (sides.length && (!f.left || SHARED_VALUE.has(f.code))) return sharedView(f, sides);
    const masked = f.right && f.left.value === f.right.value;  // e.g. two IDs differing only in their birth dates
    return h("div", { class: f.blocking === false ? "finding warning" : "finding", title: f.message || "" },
      h("span", { class: "field", text: f.field || f.code }),
      sideView(f.left),
      f.right ? h("span", { class: "ne", text: "≠" }) : null,
      f.right ? sideView(f.right) : null,
      h("span", { class: "code", text: f.code }),
      masked ? h("div", { class: "why", text: "the two differ where the list masks them; the shipment page shows both" }) : null);
  }

  function findingsOf(item) {
    const list = item.findings || [];
    const blocking = list.filter((f) => f.blocking !== false);
    const shown = (blocking.length ? blocking : list).slice(0, 4);
    const out = shown.map(findingView);
    if (list.length > shown.length) out.push(h("div", { class: "sub", text: `+ ${list.length - shown.length} more` }));
    // what is missing, whatever the findings: a shipment with a finding may lack a leg too
    if (item.missing && item.missing.length) {
      out.push(h("div", { class: "sub", text: `missing 缺少: ${item.missing.map((k) => `${k} ${KIND_ZH[k] || ""}`).join(", ")}` }));
    }
    return out;
  }

  // --- the list ---

  function filterParams() {
    const form = $("filters");
    const params = new URLSearchParams();
    for (const el of form.elements) {
      if (!el.name || !el.value) continue;
      if (el.type === "datetime-local") params.set(el.name, new Date(el.value).toISOString());
      else params.set(el.name, el.value.trim());
    }
    return params;
  }

  function shipmentHref(item) {
    const p = new URLSearchParams({ ebpCode: item.ebpCode, orderNo: item.orderNo });
    return `#/shipment?${p}`;
  }

  function listRow(item, fresh) {
    return h("tr", { class: fresh ? "fresh" : null, "data-order": item.orderNo },
      h("td", { class: "when", text: fmtTime(item.updated_at) }),
      h("td", { class: "order" },
        h("a", { href: shipmentHref(item), class: "mono", text: item.orderNo }),
        h("div", { class: "sub" }, h("span", { class: `state ${item.state}`, text: `${item.state} ${STATE_ZH[item.state] || ""}` }),
          " ", item.ebpCode || "(waybill only)", item.mode ? ` · ${item.mode}` : "",
          item.flow === "export" ? " · export 出口" : ""),
        h("div", {}, h("span", { class: `customs-badge customs-${item.customsStatus}`,
          text: `customs 海关 ${item.customsStatus} ${CUSTOMS_ZH[item.customsStatus] || ""}`.trim() }))),
      h("td", { class: "buyer" }, h("div", { text: item.buyerName || "—" }),
        h("div", { class: "sub mono", text: item.buyerIdNumber || "" })),
      h("td", {}, findingsOf(item)));
  }

  // The list on screen keeps the filters it was loaded with (state.listParams): "Load more" and the live reloads use
  // them, not whatever the form says now; a live reload keeps the rows loaded so far (up to 200), not page 1.
  async function loadList(append = false, live = false) {
    const fromForm = !(append || live) || state.listParams === null;
    // a live reload follows the filters last asked for, whose load may not have answered yet (else, newer, it would
    // draw the list as it was over the one asked for)
    const base = live ? state.listAsked || state.listParams : state.listParams;
    const params = new URLSearchParams(fromForm ? filterParams().toString() : base);
    const key = params.toString();
    if (fromForm) state.listAsked = key;
    const shown = $("list-table").tBodies[0].rows.length;
    if (live && shown > 50) params.set("limit", String(Math.min(shown, 200)));
    if (append && state.cursor) params.set("cursor", state.cursor);
    const seq = ++state.listSeq;
    const body = await call(`${API}/shipments?${params}`);
    // a live reload of the list as it was may answer after the filters changed: the newer load draws the list
    if (seq !== state.listSeq) return;
    const tbody = $("list-table").tBodies[0];
    const before = new Set([...tbody.rows].map((r) => r.dataset.order));
    const firstLoad = state.listKey !== key;
    const rows = body.items.map((item) => listRow(item, !append && !firstLoad && !before.has(item.orderNo)));
    // the rows are made anew: a keyboard user's focus stays on the same shipment's link (or, back from a shipment's
    // page, returns to the link that opened it)
    const activeRow = tbody.contains(document.activeElement) ? document.activeElement.closest("tr") : null;
    const activeLink = activeRow ? activeRow.querySelector("td.order a") : null;
    const focusHref = state.returnFocus || (activeLink ? activeLink.getAttribute("href") : null);
    if (append) tbody.append(...rows); else tbody.replaceChildren(...rows);
    if (focusHref && !append) {
      const link = [...tbody.querySelectorAll("td.order a")].find((a) => a.getAttribute("href") === focusHref);
      if (link) link.focus({ preventScroll: !state.returnFocus });
    }
    state.returnFocus = null;
    state.listKey = key;
    state.listParams = key;
    $("list-csv").href = `${API}/shipments.csv?${key}`;  // the list as loaded, every page of it
    state.cursor = body.next_cursor;
    $("list-more").hidden = !body.next_cursor;
    $("list-empty").hidden = tbody.rows.length > 0;
    $("list-count").textContent = `${tbody.rows.length}${body.next_cursor ? "+" : ""}`;
    const stateName = params.get("state") || "mismatched";
    const titles = { mismatched: "Mismatches 三单对碰不一致", incomplete: "Incomplete 待补齐", matched: "Matched 已匹配", any: "Shipments 全部订单" };
    const customs = params.get("customs_status");
    $("list-title").textContent = titles[stateName] +
      (customs ? ` · customs 海关 ${customs} ${CUSTOMS_ZH[customs] || ""}`.trimEnd() : "");
  }

  // The list filtered as the counts' cards and chips say (the form's other fields as they are).
  function showList(filters) {
    const form = $("filters").elements;
    for (const [name, value] of Object.entries(filters)) form[name].value = value;
    if (window.location.hash && window.location.hash !== "#/") {
      state.listStale = "form";
      window.location.hash = "#/";
    } else scheduleList();
  }

  function scheduleList(live = false) {
    // a live reload asked meanwhile does not take the place of a load the filters asked for (it would read none)
    state.listFormDue = state.listFormDue || !live;
    clearTimeout(state.listTimer);
    state.listTimer = setTimeout(() => {
      const fromForm = state.listFormDue;
      state.listFormDue = false;
      loadList(false, !fromForm).catch((e) => toast(e.message, true));
    }, 250);
  }

  // --- charts (inline SVG) ---

  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") el.textContent = v; else el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) if (c) el.append(c);
    return el;
  }

  function niceMax(v) {
    if (v <= 4) return 4;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function lineChart(container, times, series, { width = 860, height = 190, unit = "" } = {}) {
    const left = 38, right = 10, top = 10, bottom = 22;
    const w = width - left - right, hgt = height - top - bottom;
    const values = series.flatMap((x) => x.values.filter((v) => v !== null && v !== undefined));
    const max = niceMax(Math.max(0, ...values));
    const n = times.length;
    const x = (i) => left + (n <= 1 ? 0 : (i * w) / (n - 1));
    const y = (v) => top + hgt - (v / max) * hgt;
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}` });
    for (let k = 0; k <= 4; k++) {
      const v = (max * k) / 4;
      svg.append(s("line", { class: "grid-line", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
      svg.append(s("text", { class: "axis", x: left - 6, y: y(v) + 4, "text-anchor": "end",
        text: `${Number.isInteger(v) ? v : v.toFixed(1)}${unit}` }));
    }
    const step = Math.max(1, Math.round(n / 6));
    for (let i = 0; i < n; i += step) {
      svg.append(s("text", { class: "axis", x: x(i), y: height - 6, "text-anchor": "middle",
        text: fmtTime(times[i], false).slice(0, 5) }));
    }
    for (const ser of series) {
      let d = "";
      let pen = false;
      ser.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      });
      if (ser.area && d) {
        svg.append(s("path", { class: `area ${ser.name}`, d: `${d}L${x(n - 1)},${y(0)}L${x(0)},${y(0)}Z` }));
      }
      const path = s("path", { class: `series ${ser.name}`, d: d || "M0,0" });
      path.append(s("title", { text: ser.label }));
      svg.append(path);
    }
    // one invisible column per minute carries the figures as a tooltip
    const colW = n > 1 ? w / (n - 1) : w;
    times.forEach((t, i) => {
      const tip = `${fmtTime(t, false).slice(0, 5)}  ` + series.map((ser) => `${ser.label} ${ser.values[i] ?? "–"}`).join(" · ");
      svg.append(s("rect", { x: x(i) - colW / 2, y: top, width: colW, height: hgt, fill: "transparent" },
        s("title", { text: tip })));
    });
    container.replaceChildren(svg);
  }

  async function loadSeries() {
    state.seriesAt = Date.now();
    const body = await call(`${API}/series?minutes=60`);
    lineChart($("chart"), body.minutes, [
      { name: "accepted", label: "accepted", values: body.accepted, area: true },
      { name: "rejected", label: "rejected", values: body.rejected },
      { name: "forwarded", label: "forwarded", values: body.forwarded },
    ]);
    const sum = (a) => a.reduce((x, v) => x + v, 0);
    $("chart-totals").textContent =
      `60 min: ${fmtNum(sum(body.accepted))} / ${fmtNum(sum(body.rejected))} / ${fmtNum(sum(body.forwarded))}`;
    lineChart($("latency-chart"), body.minutes, [
      { name: "p50", label: "p50", values: body.receipt_latency.p50_s },
      { name: "p95", label: "p95", values: body.receipt_latency.p95_s },
    ], { height: 130, unit: "s" });
  }

  // --- the live feed ---

  function renderBanner() {
    const lines = [state.alerts.database, state.alerts.signing].filter(Boolean);
    const banner = $("banner");
    banner.hidden = lines.length === 0;
    banner.textContent = lines.join(" · ");
  }

  // The gateway's own signing key (gateway.signing.Signer.standing): past its certificate's end it signs nothing and
  // JSON declarations it would sign are answered 503, so the operators are told before, and while, it happens.
  function signingAlert(s) {
    if (!s || s.state === "valid") return null;
    // a key on a UKey (gateway.ukey.UKeySigner): the card out of reach, or refusing until a reload
    if (s.state === "ukey_unreachable") {
      return `Signing UKey unreachable (${s.ukey}) — JSON declarations refused (503) 签名UKey无法连接，JSON申报无法签名`;
    }
    if (s.state === "ukey_refused") {
      return `Signing UKey refused: ${s.reason} 签名UKey拒绝签名，请检查后重新加载配置`;
    }
    const until = fmtTime(s.valid_until);
    if (s.state === "expired") {
      return `Signing certificate expired ${until} — JSON declarations refused (503) 签名证书已过期，JSON申报无法签名`;
    }
    if (s.state === "not_yet_valid") {
      return `Signing certificate valid only from ${fmtTime(s.valid_from)} 签名证书尚未生效`;
    }
    return `Signing certificate expires in ${s.days_left} d (${until}) 签名证书即将过期，请及时更新`;
  }

  // Why the feed's connection was refused: 503 is the database away (the API answers so while PostgreSQL cannot be
  // reached), 401 a session that ended, no answer at all the gateway itself.
  async function feedRefused() {
    let status = 0;
    try {
      status = (await fetch(`${API}/session`, { credentials: "same-origin" })).status;
    } catch (err) { /* no answer */ }
    if (status === 401) window.location.assign("/ops/login");
    if (status === 503) state.alerts.database = "Database unavailable 数据库不可用";
    else if (status === 0) state.alerts.database = "Gateway not answering 网关无响应";
    renderBanner();
  }

  // EventSource reconnects by itself after a dropped connection, but not after an HTTP error (a 503 while the database
  // is away, a proxy's 502): it closes for good. The page then opens a new one, waiting longer each time (1 s to 30 s).
  function connect() {
    const live = $("live");
    const es = new EventSource(`${API}/events`);
    es.onopen = () => {
      state.feedRetries = 0;
      state.alerts.database = null;  // the stream's session was read: the database answers (the feed says if not)
      renderBanner();
      live.dataset.state = "live";
      $("live-text").textContent = "Live 实时";
    };
    es.onerror = () => {
      live.dataset.state = "reconnecting";
      $("live-text").textContent = "reconnecting… 重连中";
      if (es.readyState !== EventSource.CLOSED) return;
      const wait = Math.min(30000, 1000 * 2 ** Math.min(state.feedRetries++, 5));
      feedRefused().finally(() => setTimeout(connect, wait));
    };
    es.addEventListener("summary", (ev) => {
      const data = JSON.parse(ev.data);
      const before = state.counts ? JSON.stringify(state.counts.by_state) : null;
      renderCounts(data.shipments);
      $("live-text").textContent = `Live 实时 · ${fmtTime(data.as_of, false)}`;
      const changed = data.changed || [];
      if (data.last_rejection != null && data.last_rejection !== state.refusedNewest) {
        state.refusedNewest = data.last_rejection; // one reload per new refusal, however many events name it
        loadRefused().catch(() => {});
      }
      // the warehouse panel's view reloads when a callback of its kind came, or a cancel changed (not on the first
      // event: loaded at start); the cancels needing a look are counted on their button whatever the view
      const newest = { unlinked: data.last_unlinked_callback, refused: data.last_refused_callback,
        cancels: `${data.warehouse_cancels_at}|${data.open_warehouse_cancels}` };
      const seen = state.warehouseNewest;
      if ("unlinked" in seen && newest[warehouse.view] !== seen[warehouse.view]) {
        warehouse.load(false, { live: true }).catch(() => {});
      }
      state.warehouseNewest = newest;
      const open = Number(data.open_warehouse_cancels || 0);
      $("warehouse-cancels-count").textContent = open ? fmtNum(open) : "";
      $("warehouse-cancels-count").classList.toggle("alarm", open > 0);
      // the 179 panel reloads when customs asked again or answered an upload, or a question was closed (not on the
      // first event: loaded at start)
      const asked = `${data.last_question}|${data.last_question_answer}|${data.open_questions}`;
      if (state.questionsSeen !== undefined && asked !== state.questionsSeen) {
        questions.load(false, { live: true }).catch(() => {});
      }
      state.questionsSeen = asked;
      // the unmatched receipts' panel when one came, or one found its document or was closed (likewise)
      const kept = `${data.last_unmatched_receipt}|${data.open_unmatched_receipts}`;
      if (state.unmatchedSeen !== undefined && kept !== state.unmatchedSeen) {
        unmatched.load(false, { live: true }).catch(() => {});
      }
      state.unmatchedSeen = kept;
      if (data.awaiting_at !== state.awaitingAt) {
        state.awaitingAt = data.awaiting_at;
        schedulePending();
      }
      const listChanged = changed.length || data.changed_overflow || before !== JSON.stringify(data.shipments.by_state);
      if (state.view === "overview" && listChanged) {
        scheduleList(true);
        if (Date.now() - state.seriesAt > 5000) loadSeries().catch(() => {});
      } else if (listChanged && !state.listStale) state.listStale = "live";  // read again once back on the overview
      if (state.view === "shipment" && state.shipmentKey && (data.changed_overflow ||
          changed.some((c) => c.ebpCode === state.shipmentKey.ebpCode && c.orderNo === state.shipmentKey.orderNo))) {
        loadShipment(state.shipmentKey).catch((e) => toast(e.message, true));
      }
    });
    es.addEventListener("queue", (ev) => {
      const data = JSON.parse(ev.data);
      if (renderQueue(data.endpoints, data.dead_total, data.receipts_awaited, data.dead_newest)) {
        loadQueue().catch(() => {});
        // an upload that gave up waiting for its data is a dead letter now
        questions.load(false, { live: true }).catch(() => {});
      }
    });
    es.addEventListener("status", (ev) => {
      const data = JSON.parse(ev.data);
      state.alerts.database = data.database === "ok" ? null : "Database unavailable 数据库不可用";
      renderBanner();
    });
    es.addEventListener("signing", (ev) => {
      state.alerts.signing = signingAlert(JSON.parse(ev.data));
      renderBanner();
    });
    es.addEventListener("signed-out", () => { es.close(); window.location.assign("/ops/login"); });
  }

  // --- the shipment page ---

  function docTitle(d) {
    return `${d.message_type} ${KIND_ZH[d.kind] || d.kind}`;
  }

  // Indents XML for reading: one element per line, text-only elements kept on their line. Display only:
  // the text is the stored text (entities stay escaped), only whitespace between tags is added.
  function indentXml(xml) {
    if ((xml.match(/>\s*\n\s*</g) || []).length > 2) return xml; // already laid out by its sender
    const tokens = xml.match(/<[^>]+>|[^<]+/g) || [];
    const out = [];
    let depth = 0;
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i];
      if (t.startsWith("</")) {
        depth = Math.max(0, depth - 1);
        out.push("  ".repeat(depth) + t);
      } else if (t.startsWith("<")) {
        const leaf = t.endsWith("/>") || t.startsWith("<?") || t.startsWith("<!");
        const next = tokens[i + 1], after = tokens[i + 2];
        if (!leaf && next !== undefined && !next.startsWith("<") && after !== undefined && after.startsWith("</")) {
          out.push("  ".repeat(depth) + t + next + after);
          i += 2;
          continue;
        }
        out.push("  ".repeat(depth) + t);
        if (!leaf) depth++;
      } else if (t.trim()) {
        out.push("  ".repeat(depth) + t.trim());
      }
    }
    return out.join("\n");
  }

  function xmlButton(guid, docGuid, what) {
    return revealButton("xml-toggle", "XML", `XML of ${what} (message ${guid})`, `xml ${guid} ${docGuid}`, async () => {
      const body = await call(`${API}/messages/${encodeURIComponent(guid)}/xml`);
      let raw = false;
      const pre = h("pre", { class: "xml", text: indentXml(body.raw_xml) });
      const toggle = h("button", { type: "button", class: "btn ghost", text: "as stored 原文" });
      toggle.addEventListener("click", () => {
        raw = !raw;
        pre.textContent = raw ? body.raw_xml : indentXml(body.raw_xml);
        toggle.textContent = raw ? "indented 缩进" : "as stored 原文";
      });
      return h("div", { class: "xml-block" },
        h("div", { class: "sub" }, `message ${body.guid} · ${body.message_type} · ${body.raw_xml.length} characters `,
          "· indented for reading ", toggle), pre);
    }, (btn, el) => btn.closest("li").append(el));
  }

  function timelineItems(ship) {
    const items = [];
    for (const d of ship.documents) {
      if (d.kind === "receipt") {
        const head = d.head || {};
        const status = String(head.returnStatus ?? "");
        items.push({ at: d.received_at, el: h("li", { class: status.startsWith("-") || status === "100" ? "receipt failed" : "receipt" },
          h("span", { class: "t", text: fmtTime(d.received_at) }),
          h("span", { class: "what", text: `Receipt 回执 ${d.message_type} · ${status}` }),
          xmlButton(d.message_guid, d.doc_guid, `receipt ${d.message_type} ${status}`),
          h("div", { class: "detail" }, `${head.returnInfo || ""} · returnTime ${head.returnTime || "—"}`)) });
        continue;
      }
      const tags = [];
      if (d.withdrawn) tags.push(h("span", { class: "tag withdrawn", text: "withdrawn 已撤回" }));
      else if (d.is_current) tags.push(h("span", { class: "tag current", text: "current 当前" }));
      else if (d.superseded_by) tags.push(h("span", { class: "tag", text: "superseded 已被替换" }));
      if (d.forward_state !== "none") {
        tags.push(h("span", { class: `tag ${d.forward_state}`, title: d.receipt_overdue ? "receipt overdue 回执超时" : null,
          text: `${d.forward_state} ${FORWARD_ZH[d.forward_state] || ""}${d.receipt_overdue ? " ⚠" : ""}` }));
      }
      if (d.customs_status) tags.push(h("span", { class: "tag", text: `customs 海关 ${d.customs_status}` }));
      const keys = [d.key1, d.key2].filter(Boolean).join(" / ");
      // what a held inventory waits for: of each parcel of its message not ready, its shipment and the missing steps
      const held = (d.held_until || []).map((w) => `${w.ebpCode}/${w.orderNo}: ${w.waiting_for.map((x) => HOLD_WAITS[x] || x).join(", ")}`);
      items.push({ at: d.received_at, el: h("li", { class: d.is_current || d.withdrawn ? "document" : "document superseded" },
        h("span", { class: "t", text: fmtTime(d.received_at) }),
        h("span", { class: "what", text: docTitle(d) }), tags,
        xmlButton(d.message_guid, d.doc_guid, `${d.message_type} ${d.kind} ${fmtTime(d.received_at)}`),
        h("div", { class: "detail" },
          `appType ${d.app_type || "?"} ${APP_TYPE[d.app_type] || ""} · appTime ${d.app_time || "—"} · ${keys} · `,
          h("span", { class: "mono", text: `guid ${d.doc_guid}` }), ` · by ${d.submitter} (${d.source})`,
          d.customs_status ? ` · ${d.customs_info || ""} (returnTime ${d.customs_return_time || "—"})` : ""),
        held.length ? h("div", { class: "detail held-until", text: `held until 待: ${held.join("; ")}` }) : null,
        // the site's delivery: the parcel unloaded at the supervision site, under which B/L, where
        d.kind === "delivery" ? h("div", { class: "detail", text: `at the site 已入库 ${(d.head || {}).operatorName || ""} · `
          + `B/L ${(d.head || {}).billNo || "—"} · ${(d.head || {}).unloadLocation || "—"} · ${d.listed ?? "?"} parcels 件`
          + (d.invt_no ? ` · 入库单 rkdNo ${d.invt_no}` : "") }) : null,
        // never sent: withdrawn or replaced while the gateway held it (customs never had it)
        d.unsent ? h("div", { class: "detail held-until", text: `${UNSENT_ZH[d.unsent.because] || ""} — ${d.unsent.info}` }) : null) });
    }
    for (const j of ship.transmissions) {
      items.push({ at: j.created_at, el: h("li", { class: j.state === "dead" ? "transmission failed" : "transmission" },
        h("span", { class: "t", text: fmtTime(j.created_at) }),
        h("span", { class: "what", text: `Transmission 发送 → ${j.endpoint}` }),
        h("span", { class: "tag", text: j.state }),
        h("div", { class: "detail" }, `job #${j.id} · ${j.kind} · attempts ${j.attempts}` +
          (j.last_error ? ` · ${j.last_error}` : "")),
        j.history.length ? h("details", { class: "history", "data-keep": `job ${j.id}` },
          h("summary", { text: `attempt history 尝试记录 (${j.history.length})` }),
          attemptsTable(j.history)) : null) });
    }
    for (const r of ship.receipts) {
      const status = r.return_status;
      items.push({ at: r.received_at, el: h("li", { class: status.startsWith("-") || status === "100" ? "receipt failed" : "receipt" },
        h("span", { class: "t", text: fmtTime(r.received_at) }),
        h("span", { class: "what", text: `Receipt 回执 ${r.message_type} · ${status}` }),
        h("span", { class: "tag", text: r.outcome }),
        h("div", { class: "detail", text: [r.keys && r.keys.taxNo ? `taxNo ${r.keys.taxNo}` : null, r.return_info,
          `returnTime ${r.return_time}`, `via ${r.source}`].filter(Boolean).join(" · ") })) });
    }
    for (const o of ship.warehouse_orders || []) {
      for (const e of o.events) {
        // a status of progress after the gateway asked to cancel the order: the goods may be leaving
        const late = e.after_cancel ? " ⚠ after the cancel 取消后" : "";
        items.push({ at: e.received_at, el: h("li", { class: WAREHOUSE_ENDED.has(e.status) || e.after_cancel
          ? "receipt failed" : "receipt", "data-warehouse-event": e.status },
          h("span", { class: "t", text: fmtTime(e.received_at) }),
          h("span", { class: "what", text: `Warehouse 仓库 ${o.warehouse_order_no || "—"} · ${e.status} ${WAREHOUSE_ZH[e.status] || ""}${late}` }),
          h("div", { class: "detail", text: [`${o.direction} order ${o.order_id}`, e.reason,
            `occurredAt ${e.occurred_at}`].filter(Boolean).join(" · ") })) });
      }
      const c = o.cancel;
      if (c) {  // the cancel the gateway asked of the warehouse, and what became of it
        items.push({ at: c.requested_at, el: h("li", { class: c.needs_look ? "receipt failed" : "receipt",
          "data-warehouse-cancel": c.id },
          h("span", { class: "t", text: fmtTime(c.requested_at) }),
          h("span", { class: "what", text: `Warehouse 仓库 ${o.warehouse_order_no || "—"} · cancel asked 已请求取消` +
            (c.needs_look ? ` ⚠ ${c.flags.map((f) => CANCEL_WHY[f] || f).join(" · ")}` : "") }),
          c.closed_at ? h("span", { class: "tag", text: "closed 已关闭" }) : null,
          h("div", { class: "detail", text: [`${o.direction} order ${o.order_id} · ${c.endpoint}`, c.reason,
            cancelAnswer(c), c.closed_at ? `closed by ${c.closed_by}: ${c.close_reason}` : null]
            .filter(Boolean).join(" · ") })) });
      }
    }
    items.sort((a, b) => String(a.at).localeCompare(String(b.at)));
    return items.map((i) => i.el);
  }

  // an order as the shipment's facts name it: the warehouse's number, its furthest status, and its cancel
  function warehouseFact(o) {
    const status = o.status ? `${o.status} ${WAREHOUSE_ZH[o.status] || ""}`.trim() : "nothing reported 无回执";
    const c = o.cancel;
    const cancel = !c ? "" : c.needs_look ? ` ⚠ cancel: ${c.flags.map((f) => CANCEL_WHY[f] || f).join(" · ")}`
      : c.confirmed_at ? "" : " · cancel asked 已请求取消";
    return `${o.warehouse_order_no || "—"} ${status}${cancel}`;
  }

  function findingsTable(findings) {
    if (!findings.length) return h("p", { class: "empty", text: "No findings. 无差异" });
    const side = (x) => x ? [h("div", {}, h("b", { text: x.value ?? "(missing 缺失)" })),
      h("div", { class: "sub mono", text: `${x.doc} ${x.path}` })] : "—";
    return h("table", { class: "data findings" },
      h("thead", {}, h("tr", {}, ["Field 字段", "Left 左", "Right 右", "Code", "Message"].map((t) => h("th", { text: t })))),
      h("tbody", {}, findings.map((f) => h("tr", { class: f.blocking === false ? "warn" : "bad" },
        h("td", { class: "mono", text: f.field }), h("td", {}, side(f.left)), h("td", {}, side(f.right)),
        h("td", { class: "mono sub", text: f.code }), h("td", { text: f.message })))));
  }

  // Each bill of customs (CEB816/818) over the gateway's estimate of its inventory; a tax the bill and the estimate
  // disagree on (its tax.bill_differs finding) is marked in both rows.
  function taxBillView(b) {
    const differs = new Map((b.findings || []).filter((f) => f.code === "tax.bill_differs").map((f) => [f.field, f]));
    const cell = (row, name) => {
      const f = differs.get(name);
      const value = row ? row[name] : null;
      return h("td", { class: f ? "num differs" : "num", title: f ? f.message : null },
        f ? h("span", { class: "ne", text: "≠ " }) : null, value ?? "—");
    };
    const status = `${b.status} ${b.status_name || ""} ${TAX_STATUS_ZH[b.status] || ""}`.trim();
    const est = b.estimate || {};
    const estimateLabel = `Gateway estimate 网关估算${est.full_rate ? " (full rate 全额)" : ""}` +
      (est.return ? " (goods kept 退货后留存)" : "");
    // the return the estimate takes back, one concluded after the consolidation it does not, and a void bill's
    // amounts, compared with nothing (gateway.taxbills.return_for, compare)
    const notes = [
      est.return ? `estimate of the goods kept after the return ${est.return.guid} customs concluded ` +
        `${est.return.concluded_at} 已扣除退货` : null,
      est.uncounted_return ? `return ${est.uncounted_return.guid} ${est.uncounted_return.withdrawn ? "withdrawn " : ""}` +
        `concluded ${est.uncounted_return.concluded_at}, after the bill's consolidation: not counted ` +
        "(customs corrects no consolidated bill) 汇总后审结，不计入" : null,
      b.status === "3" ? "void: nothing is levied, the amounts are not compared 已作废，不比对" : null,
    ].filter(Boolean);
    return h("div", { class: differs.size ? "tax-bill differs" : "tax-bill", "data-tax-no": b.taxNo },
      h("div", { class: "tax-head" },
        h("b", { class: "mono", text: b.taxNo }),
        h("span", { class: `tag tax-status s${b.status}`, text: status }),
        h("span", { class: "sub" }, "invtNo ", h("span", { class: "mono", text: b.invtNo })),
        h("span", { class: "sub" }, "entDutyNo 缴款书 ", h("span", { class: "mono", text: b.entDutyNo || "—" })),
        h("span", { class: "sub", text: `returnTime ${b.status_time || "—"}` })),
      h("table", { class: "data taxes" },
        h("thead", {}, h("tr", {}, h("th", { text: "" }),
          TAXES.map(([name, zh]) => h("th", { class: "num", text: `${name} ${zh}` })))),
        h("tbody", {},
          h("tr", { class: "billed" }, h("td", { text: "Customs' bill 海关税单" }), TAXES.map(([name]) => cell(b, name))),
          h("tr", { class: "estimated" }, h("td", { text: estimateLabel }), TAXES.map(([name]) => cell(b.estimate, name))))),
      notes.map((n) => h("div", { class: "sub return-note", text: n })),
      differs.size ? h("div", { class: "sub differs-note" }, "tax.bill_differs: ",
        [...differs.values()].map((f) => f.message).join("; ")) : null);
  }

  function taxBillsPanel(ship) {
    const bills = ship.tax_bills || [];
    if (ship.flow === "export" && !bills.length) return null; // customs taxes no export
    return h("section", { class: "panel", id: "tax-bills" },
      h("h2", {}, "Tax bills ", h("span", { class: "zh", text: "电子税单" }),
        h("small", { text: "customs' CEB816/818 beside the gateway's estimate" })),
      bills.length ? bills.map(taxBillView) : h("p", { class: "empty", text: "No tax bill from customs yet. 暂无电子税单" }));
  }

  // A B-type export inventory's summary declaration (汇总申报): whether it was applied for and under which customs
  // declarations its items went (gateway.summary.inventory_summary).
  const SUMMARY_ZH = { declared: "已汇总申报", cancelled: "已撤销 不汇总", applied: "已申请汇总", awaiting: "待汇总",
    not_released: "未放行" };
  function summaryText(sm) {
    const parts = [`${sm.state.replace("_", " ")} ${SUMMARY_ZH[sm.state] || ""}`.trim()];
    for (const d of sm.declarations) {
      const items = d.items.map((i) => `${i.gnum}→${i.gseqno}`).join(", ");
      parts.push(`declaration 报关单 ${d.entryId || d.declSeqNo} (decState ${d.decState}; items 商品 ${items})`);
    }
    for (const a of sm.applications) parts.push(`application 汇总申请 ${a.copNo}${a.sumNo ? ` · sumNo ${a.sumNo}` : ""}`);
    return parts.join(" · ");
  }

  // The order's raw payment data for customs' 179 check (README, "Real-time payment data (179)"): handed over or
  // not, and customs' latest question with its upload's outcome.
  const QUESTION_ZH = { asked: "待上传", uploaded: "已上传", refused: "被拒" };
  function paymentDataText(pd) {
    const parts = [pd.payTransactionId ? `handed over 已提供 (payTransactionId ${pd.payTransactionId})`
      : "not handed over 未提供"];
    const q = pd.questions[0];
    if (q) {
      const answer = q.answer ? ` — customs 海关 ${q.answer.code}${q.answer.message ? ` ${q.answer.message}` : ""}` : "";
      parts.push(`customs asked 海关调取 ${fmtTime(q.received_at)}: ${q.state} ${QUESTION_ZH[q.state] || ""}${answer}`);
    }
    if (pd.questions.length > 1) parts.push(`${pd.questions.length} questions 次调取`);
    return parts.join(" · ");
  }

  function fact(label, value, mono = false) {
    return h("div", {}, h("dt", { text: label }), h("dd", { class: mono ? "mono" : null, text: value ?? "—" }));
  }

  // A field of the shipment's documents' heads: the order's, else the inventory's, else the waybill's (a shipment
  // whose order has not come, or whose order leaves it empty, still names its buyer and consignee); of each kind the
  // current version first.
  function headValue(ship, name) {
    for (const kind of ["order", "inventory", "waybill"]) {
      const docs = ship.documents.filter((d) => d.kind === kind && !d.withdrawn);
      docs.sort((a, b) => Number(b.is_current) - Number(a.is_current));
      for (const d of docs) {
        const value = d.head ? d.head[name] : null;
        if (value !== null && value !== undefined && String(value).trim()) return value;
      }
    }
    return null;
  }

  async function loadShipment(key, opened = false) {
    const p = new URLSearchParams(key);
    const ship = await call(`${API}/shipment?${p}`);
    const party = (name) => headValue(ship, name);
    const root = $("shipment");
    // drawn anew on each change of the shipment: the panels opened stay open, the page stays where it was scrolled
    const scrolled = window.scrollY;
    const draw = () => root.replaceChildren(
      h("section", { class: "panel" },
        h("div", { class: "ship-head" },
          h("h1", { class: "mono", text: ship.orderNo, tabindex: "-1", "data-keep": "title" }),
          h("span", { class: `state ${ship.state}`, text: `${ship.state} ${STATE_ZH[ship.state] || ""}` }),
          h("span", { class: "chip", title: ship.customsInfo || "",
            text: `customs 海关: ${ship.customsStatus} ${CUSTOMS_ZH[ship.customsStatus] || ""}` })),
        h("dl", { class: "facts" },
          fact("ebpCode 电商平台", ship.ebpCode || "(waybill only)", true),
          fact("ebcCode 电商企业", ship.ebcCode, true),
          fact("Trade mode 监管方式", ship.mode),
          fact("Flow 进出口", ship.flow === "export" ? "export 出口" : "import 进口"),
          fact("Missing 缺少", ship.missing.length ? ship.missing.map((k) => `${k} ${KIND_ZH[k] || ""}`).join(", ") : "none 无"),
          fact("Warehouse 仓库", (ship.warehouse_orders || []).map(warehouseFact).join(", ") || "—"),
          ship.summary ? fact("Summary 汇总申报", summaryText(ship.summary)) : null,
          ship.payment_data ? fact("Payment data 支付原始数据 (179)", paymentDataText(ship.payment_data)) : null,
          fact("Buyer 订购人", party("buyerName")),
          fact("Buyer ID 身份证号", ship.buyerIdNumber, true),
          fact("Consignee 收货人", party("consignee")),
          fact("Updated 更新", fmtTime(ship.updated_at)))),
      h("section", { class: "panel" }, h("h2", {}, "Findings ", h("span", { class: "zh", text: "差异" })),
        findingsTable(ship.findings)),
      taxBillsPanel(ship),
      h("section", { class: "panel" }, h("h2", {}, "Timeline ", h("span", { class: "zh", text: "时间线" }),
        h("small", { text: "documents, transmissions, receipts and the warehouse's callbacks" })),
        h("ol", { class: "timeline" }, timelineItems(ship))));
    if (opened) {
      draw();
      root.querySelector("h1").focus();  // a view just opened: the keyboard starts at its title
      return;
    }
    keepingOpen(root, draw);
    if (state.shipmentKey === key) window.scrollTo(window.scrollX, scrolled);
  }

  // --- routing ---

  function route() {
    const hash = window.location.hash || "#/";
    if (hash.startsWith("#/shipment?")) {
      const p = new URLSearchParams(hash.slice("#/shipment?".length));
      if (state.view === "overview") state.listScroll = window.scrollY;
      state.view = "shipment";
      state.shipmentKey = { ebpCode: p.get("ebpCode") || "", orderNo: p.get("orderNo") || "" };
      $("overview").hidden = true;
      $("shipment-view").hidden = false;
      $("shipment").replaceChildren(h("p", { class: "empty", text: "Loading… 加载中" }));
      window.scrollTo(0, 0);
      state.openedFrom = hash;  // back on the overview, the focus returns to the link to it
      loadShipment(state.shipmentKey, true).catch((e) => {
        $("shipment").replaceChildren(h("p", { class: "empty", text: `Could not load the shipment: ${e.message}` }));
      });
    } else {
      const back = state.view === "shipment";
      state.view = "overview";
      state.shipmentKey = null;
      $("shipment-view").hidden = true;
      $("overview").hidden = false;
      // Back from a shipment page the list is as it was left: its rows (all those loaded), its cursor, where the page
      // was scrolled. It is read again only if it never was, if it was filtered anew, or if shipments changed meanwhile
      // (then as many rows as were loaded, as a live reload).
      const reload = !back || state.listParams === null ? "form" : state.listStale;
      state.listStale = null;
      if (back) window.scrollTo(0, state.listScroll);
      if (state.openedFrom) {
        const href = state.openedFrom;
        state.openedFrom = null;
        if (reload) state.returnFocus = href;
        const link = [...document.querySelectorAll("#overview a[href]")].find((a) => a.getAttribute("href") === href);
        (link || $("list-title")).focus({ preventScroll: true });
      }
      if (reload) scheduleList(reload === "live");
    }
  }

  // --- start ---

  async function start() {
    state.session = await call(`${API}/session`);
    $("who-name").textContent = state.session.name;
    $("who-role").textContent = state.session.role;
    $("sign-out").addEventListener("click", async () => {
      try { await call("/ops/logout", { method: "POST" }); } catch (e) { /* signed out either way */ }
      window.location.assign("/ops/login");
    });
    $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadList().catch((e) => toast(e.message, true)); });
    $("filters").addEventListener("reset", () => setTimeout(scheduleList, 0));
    $("list-more").addEventListener("click", () => loadList(true).catch((e) => toast(e.message, true)));
    $("refused-more").addEventListener("click", () => loadRefused(true).catch((e) => toast(e.message, true)));
    $("dead-more").addEventListener("click", () => loadDead({ append: true }).catch((e) => toast(e.message, true)));
    $("dead-endpoint").addEventListener("change", () => loadDead().catch((e) => toast(e.message, true)));
    $("pending-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.pendingCode = $("pending-form").elements.ebcCode.value.trim();  // empty: every consignor's
      loadPending().catch((e) => toast(e.message, true));
    });
    $("pending-more").addEventListener("click", () => loadPending(true).catch((e) => toast(e.message, true)));
    warehouse.wire();
    $("questions-panel").hidden = !state.session.payment_questions;
    questions.wire();
    unmatched.wire();
    $("awaited-details").addEventListener("toggle", () => {
      if ($("awaited-details").open) loadAwaitedList().catch((e) => toast(e.message, true));
    });
    $("awaited-more").addEventListener("click", () => loadAwaitedList(true).catch((e) => toast(e.message, true)));
    $("refused-filters").addEventListener("submit", (ev) => {
      ev.preventDefault();
      loadRefused().catch((e) => toast(e.message, true));
    });
    $("refused-filters").addEventListener("reset", () => setTimeout(() => loadRefused().catch(() => {}), 0));
    for (const card of document.querySelectorAll("[data-state-filter]")) {
      card.addEventListener("click", (ev) => {
        ev.preventDefault();
        showList({ state: card.dataset.stateFilter });
      });
    }
    window.addEventListener("hashchange", route);
    const summary = await call(`${API}/summary`);
    renderCounts(summary.shipments);
    route();
    await Promise.all([loadQueue(), loadSeries(), loadRefused(), warehouse.load(), unmatched.load(), questions.load()])
      .catch((e) => toast(e.message, true));
    setInterval(() => { if (Date.now() - state.seriesAt > 30000) loadSeries().catch(() => {}); }, 10000);
    setInterval(() => renderAwaited(null), 5000);
    connect();
  }

  document.addEventListener("DOMContentLoaded", () => { start().catch((e) => toast(e.message, true)); });
})();
