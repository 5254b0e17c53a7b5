// dlog viewer UI. Plain JavaScript, no build step, no dependencies.
// Safety rule: record text (service names, span names, attributes, log bodies) is only ever
// placed with textContent or as attribute values through createElement/setAttribute; this
// file never assigns innerHTML.
'use strict';

(function () {
  // ---------- small helpers ----------
  function h(tag, attrs) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const k of Object.keys(attrs)) {
        const v = attrs[k];
        if (v === undefined || v === null || v === false) continue;
        if (k === 'text') el.textContent = String(v);
        else if (k === 'class') el.className = v;
        else if (k === 'on') { for (const ev of Object.keys(v)) el.addEventListener(ev, v[ev]); }
        else if (k === 'dataset') { for (const d of Object.keys(v)) el.dataset[d] = v[d]; }
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (let i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }
  function append(el, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) { for (const c of child) append(el, c); return; }
    if (typeof child === 'string' || typeof child === 'number') el.appendChild(document.createTextNode(String(child)));
    else el.appendChild(child);
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs) {
    const el = document.createElementNS(SVG, tag);
    for (const k of Object.keys(attrs || {})) {
      if (k === 'text') el.textContent = String(attrs[k]);
      else if (k === 'on') { for (const ev of Object.keys(attrs.on)) el.addEventListener(ev, attrs.on[ev]); }
      else el.setAttribute(k, String(attrs[k]));
    }
    return el;
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  const app = () => document.getElementById('app');

  async function api(path) {
    const res = await fetch(path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (res.status === 401) { location.href = '/login'; throw new Error('sign in first'); }
    let body;
    try { body = await res.json(); } catch (e) { throw new Error(path + ': HTTP ' + res.status); }
    if (!res.ok) {
      const msg = body && body.errors && body.errors[0] ? body.errors[0].msg : ('HTTP ' + res.status);
      throw new Error(msg);
    }
    return body;
  }
  // State-changing calls send JSON (the API refuses anything else, which keeps them
  // CSRF-safe) and the X-Dlog-Request header.
  async function send(method, path, body) {
    const res = await fetch(path, { method, credentials: 'same-origin',
      headers: { Accept: 'application/json', 'Content-Type': 'application/json', 'X-Dlog-Request': '1' },
      body: body === undefined ? undefined : JSON.stringify(body) });
    if (res.status === 401) { location.href = '/login'; throw new Error('sign in first'); }
    if (res.status === 204) return null;
    let out;
    try { out = await res.json(); } catch (e) { throw new Error(path + ': HTTP ' + res.status); }
    if (!res.ok) throw new Error(out && out.errors && out.errors[0] ? out.errors[0].msg : ('HTTP ' + res.status));
    return out;
  }
  function errorBox(err) { return h('p', { class: 'error-box', text: String(err && err.message ? err.message : err) }); }

  // ---------- time and duration ----------
  const tzBox = () => document.getElementById('tz-utc');
  function useUtc() { return localStorage.getItem('dlog.utc') === '1'; }
  function pad(n, w) { return String(n).padStart(w || 2, '0'); }
  function fmtTime(us) {
    const d = new Date(Math.floor(us / 1000));
    const ms = pad(d[useUtc() ? 'getUTCMilliseconds' : 'getMilliseconds'](), 3);
    if (useUtc()) {
      return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) + ' ' +
        pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds()) + '.' + ms + ' UTC';
    }
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + ms;
  }
  function fmtDur(us) {
    if (us < 1) return Math.round(us * 1000) + 'ns';
    if (us < 1000) return (Math.round(us * 10) / 10) + 'µs';
    if (us < 1e6) return (Math.round(us / 10) / 100) + 'ms';
    if (us < 60e6) return (Math.round(us / 1e4) / 100) + 's';
    return (Math.round(us / 6e5) / 100) + 'min';
  }
  function svcColor(name) {
    let hsh = 2166136261;
    for (let i = 0; i < name.length; i++) { hsh ^= name.charCodeAt(i); hsh = Math.imul(hsh, 16777619); }
    const hue = ((hsh >>> 0) % 360);
    return 'hsl(' + hue + ',55%,55%)';
  }
  function cut(text, n) { text = String(text); return text.length > n ? text.slice(0, n) + '…' : text; }
  function valueText(v) { return typeof v === 'string' ? v : JSON.stringify(v); }
  const SUMMARY_CHARS = 200;

  // A value cut to SUMMARY_CHARS, with a button that shows it whole.
  function longValue(v) {
    const full = valueText(v);
    if (full.length <= SUMMARY_CHARS) return h('span', { class: 'val', text: full });
    const span = h('span', { class: 'val', text: cut(full, SUMMARY_CHARS) });
    const btn = h('button', { class: 'link show-all', type: 'button', text: 'show all (' + full.length + ' chars)' });
    btn.addEventListener('click', () => { span.textContent = full; btn.remove(); });
    return h('span', null, span, ' ', btn);
  }
  function kvTable(obj, cls) {
    const keys = Object.keys(obj || {});
    if (!keys.length) return h('p', { class: 'muted', text: 'none' });
    const t = h('table', { class: 'kv ' + (cls || '') });
    for (const k of keys.sort()) {
      t.appendChild(h('tr', { dataset: { key: k } }, h('th', { text: k }), h('td', null, longValue(obj[k]))));
    }
    return t;
  }

  function params() { return new URLSearchParams(location.search); }
  function setNav(name) {
    for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === name);
  }

  // ---------- search ----------
  const LOOKBACKS = [['15m', 'Last 15 minutes'], ['1h', 'Last hour'], ['6h', 'Last 6 hours'], ['24h', 'Last day'], ['48h', 'Last 2 days'], ['168h', 'Last 7 days']];

  async function pageSearch() {
    setNav('search');
    const p = params();
    const root = app(); clear(root);
    const service = h('select', { name: 'service', id: 'f-service' }, h('option', { value: '', text: 'any service' }));
    const operation = h('select', { name: 'operation', id: 'f-operation' }, h('option', { value: '', text: 'any operation' }));
    const attrs = h('input', { name: 'tags', id: 'f-tags', placeholder: 'http.status_code=500 error=true', value: p.get('tags') || '' });
    const minD = h('input', { name: 'minDuration', id: 'f-min', placeholder: 'e.g. 100ms', size: 8, value: p.get('minDuration') || '' });
    const maxD = h('input', { name: 'maxDuration', id: 'f-max', placeholder: 'e.g. 2s', size: 8, value: p.get('maxDuration') || '' });
    const lookback = h('select', { name: 'lookback', id: 'f-lookback' });
    for (const [v, label] of LOOKBACKS) lookback.appendChild(h('option', { value: v, text: label }));
    lookback.value = p.get('lookback') || '1h';
    const limit = h('input', { name: 'limit', id: 'f-limit', type: 'number', min: 1, max: 1500, value: p.get('limit') || '20', size: 5 });
    const form = h('form', { class: 'filters', id: 'search-form' },
      h('label', null, 'Service ', service),
      h('label', null, 'Operation ', operation),
      h('label', { class: 'wide' }, 'Attributes ', attrs),
      h('label', null, 'Min trace duration ', minD),
      h('label', null, 'Max trace duration ', maxD),
      h('label', null, 'Time ', lookback),
      h('label', null, 'Limit ', limit),
      h('button', { type: 'submit', id: 'f-submit', text: 'Find traces' }));
    const results = h('section', { id: 'results' });
    root.appendChild(h('h1', { text: 'Find traces' }));
    root.appendChild(h('p', { class: 'muted', text: 'Attributes are key=value pairs, all required on one span. Durations apply to the whole trace (earliest start to latest end).' }));
    root.appendChild(form);
    root.appendChild(results);

    async function loadOperations() {
      clear(operation); operation.appendChild(h('option', { value: '', text: 'any operation' }));
      if (!service.value) return;
      try {
        const ops = await api('/api/services/' + encodeURIComponent(service.value) + '/operations');
        for (const o of ops.data || []) operation.appendChild(h('option', { value: o, text: o }));
      } catch (e) { /* the list stays empty */ }
    }
    service.addEventListener('change', loadOperations);
    try {
      const svcs = await api('/api/services');
      for (const name of svcs.data || []) service.appendChild(h('option', { value: name, text: name }));
    } catch (e) { results.appendChild(errorBox(e)); }
    if (p.get('service')) { service.value = p.get('service'); await loadOperations(); }
    if (p.get('operation')) operation.value = p.get('operation');

    function query() {
      const q = new URLSearchParams();
      for (const [k, el] of [['service', service], ['operation', operation], ['tags', attrs], ['minDuration', minD], ['maxDuration', maxD], ['lookback', lookback], ['limit', limit]]) {
        if (el.value && el.value.trim()) q.set(k, el.value.trim());
      }
      return q;
    }
    async function run() {
      const q = query();
      history.replaceState(null, '', '/search?' + q.toString());
      clear(results); results.appendChild(h('p', { class: 'muted', text: 'Searching…' }));
      try {
        const r = await api('/api/v1/traces?' + q.toString());
        renderResults(results, r.traces);
      } catch (e) { clear(results); results.appendChild(errorBox(e)); }
    }
    form.addEventListener('submit', (ev) => { ev.preventDefault(); run(); });
    rerender = () => run();
    run();
  }

  function renderResults(el, traces) {
    clear(el);
    el.appendChild(h('p', { class: 'count', id: 'result-count', text: traces.length + (traces.length === 1 ? ' trace' : ' traces') }));
    if (!traces.length) return;
    el.appendChild(scatter(traces));
    const list = h('ol', { class: 'trace-list', id: 'trace-list' });
    const maxDur = Math.max.apply(null, traces.map(t => t.duration_us)) || 1;
    for (const t of traces) {
      const bar = h('div', { class: 'dur-bar' });
      bar.style.width = Math.max(0.5, 100 * t.duration_us / maxDur) + '%';
      const svcs = h('span', { class: 'services' });
      for (const name of t.services) {
        const chip = h('span', { class: 'chip', text: name });
        chip.style.borderColor = svcColor(name);
        svcs.appendChild(chip);
      }
      list.appendChild(h('li', { class: 'trace-item', dataset: { traceId: t.trace_id } },
        h('a', { href: '/trace/' + t.trace_id, class: 'trace-link' },
          h('span', { class: 'root', text: t.root_service + ': ' + t.root_operation }),
          h('span', { class: 'tid', text: t.trace_id.slice(0, 7) })),
        h('span', { class: 'duration', text: fmtDur(t.duration_us) }),
        h('span', { class: 'spans', text: t.span_count + ' spans' }),
        t.error_count ? h('span', { class: 'errors', text: t.error_count + ' errors' }) : null,
        h('span', { class: 'start', text: fmtTime(t.start_us) }),
        svcs, bar));
    }
    el.appendChild(list);
  }

  // Duration over time; each dot links to its trace.
  function scatter(traces) {
    const W = 900, H = 160, P = 30;
    const svg = s('svg', { class: 'scatter', id: 'scatter', viewBox: '0 0 ' + W + ' ' + H, role: 'img' });
    const t0 = Math.min.apply(null, traces.map(t => t.start_us));
    const t1 = Math.max.apply(null, traces.map(t => t.start_us));
    const dMax = Math.max.apply(null, traces.map(t => t.duration_us)) || 1;
    svg.appendChild(s('line', { x1: P, y1: H - P, x2: W - 5, y2: H - P, class: 'axis' }));
    svg.appendChild(s('line', { x1: P, y1: 5, x2: P, y2: H - P, class: 'axis' }));
    svg.appendChild(s('text', { x: 2, y: 14, class: 'axis-label', text: fmtDur(dMax) }));
    svg.appendChild(s('text', { x: P, y: H - 8, class: 'axis-label', text: fmtTime(t0) }));
    if (t1 > t0) svg.appendChild(s('text', { x: W - 5, y: H - 8, class: 'axis-label end', text: fmtTime(t1) }));
    for (const t of traces) {
      const x = P + (t1 > t0 ? (t.start_us - t0) / (t1 - t0) : 0.5) * (W - P - 15);
      const y = H - P - (t.duration_us / dMax) * (H - P - 12);
      const a = s('a', { href: '/trace/' + t.trace_id });
      const c = s('circle', { cx: x.toFixed(1), cy: y.toFixed(1), r: Math.min(12, 3 + Math.sqrt(t.span_count)), class: t.error_count ? 'dot err' : 'dot' });
      c.appendChild(s('title', { text: t.root_service + ': ' + t.root_operation + ' · ' + fmtDur(t.duration_us) }));
      a.appendChild(c);
      svg.appendChild(a);
    }
    return svg;
  }

  // ---------- trace ----------
  const ROW_H = 24;
  const PAGE = 5000;
  const MAX_SPANS_IN_BROWSER = 200000;

  async function pageTrace(traceId) {
    setNav('');
    const root = app(); clear(root);
    const p = params();
    const target = (p.get('uiFind') || (location.hash.startsWith('#span-') ? location.hash.slice(6) : '') || '').toLowerCase();
    const state = {
      traceId, spans: [], byId: new Map(), rows: [], collapsed: new Set(), selected: null,
      matches: new Set(), matchList: [], matchAt: -1, critical: null, focus: null,
      t0: 0, t1: 1, loading: true,
    };
    const header = h('section', { class: 'trace-header', id: 'trace-header' });
    const status = h('span', { class: 'load-status', id: 'load-status', text: 'Loading…' });
    const find = h('input', { id: 'find', placeholder: 'Find in trace: text or key=value', value: target && !/^[0-9a-f]{16}$/.test(target) ? target : '' });
    const findCount = h('span', { id: 'find-count', class: 'muted' });
    const prev = h('button', { type: 'button', text: '↑', title: 'previous match' });
    const next = h('button', { type: 'button', text: '↓', title: 'next match' });
    const critBox = h('input', { type: 'checkbox', id: 'critical-path' });
    const unfocus = h('button', { type: 'button', id: 'unfocus', text: 'Show whole trace', hidden: true });
    const collapseAll = h('button', { type: 'button', id: 'collapse-all', text: 'Collapse all' });
    const expandAll = h('button', { type: 'button', id: 'expand-all', text: 'Expand all' });
    const tools = h('div', { class: 'trace-tools' }, find, prev, next, findCount,
      h('label', null, critBox, ' Critical path'), collapseAll, expandAll, unfocus, status);
    const minimap = h('canvas', { id: 'minimap', class: 'minimap', height: 40 });
    const ruler = h('div', { class: 'ruler', id: 'ruler' });
    const viewport = h('div', { class: 'waterfall', id: 'waterfall', tabindex: 0 });
    const spacer = h('div', { class: 'spacer' });
    const rowsEl = h('div', { class: 'rows', id: 'rows' });
    spacer.appendChild(rowsEl);
    viewport.appendChild(spacer);
    const details = h('aside', { class: 'details', id: 'details' }, h('p', { class: 'muted', text: 'Click a span to see its details and logs.' }));
    root.appendChild(header);
    root.appendChild(tools);
    root.appendChild(minimap);
    root.appendChild(h('div', { class: 'trace-body' }, h('div', { class: 'wf-col' }, ruler, viewport), details));

    function visibleTree() {
      // Flattens the tree depth-first (iteratively: traces can be deep), skipping collapsed
      // subtrees; under focus only the focused span's subtree.
      const rows = [];
      const roots = state.focus ? [state.byId.get(state.focus)].filter(Boolean) : state.roots;
      const stack = [];
      // Parent links come from senders and may form a cycle (A -> B -> A): each span is shown
      // once, so focusing inside a cycle cannot loop.
      const seen = new Set();
      for (let i = roots.length - 1; i >= 0; i--) stack.push([roots[i], 0]);
      while (stack.length) {
        const [node, depth] = stack.pop();
        if (seen.has(node)) continue;
        seen.add(node);
        rows.push({ node, depth });
        if (state.collapsed.has(node.span_id)) continue;
        const kids = node.children;
        for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], depth + 1]);
      }
      return rows;
    }

    function buildTree() {
      const byId = state.byId;
      if (state.unsorted) {
        state.spans.sort((a, b) => a.start_us - b.start_us || (a.span_id < b.span_id ? -1 : a.span_id > b.span_id ? 1 : 0));
        state.unsorted = false;
      }
      for (const sp of state.spans) { sp.children = []; }
      const roots = [];
      for (const sp of state.spans) {
        const parent = sp.parent_span_id && byId.get(sp.parent_span_id);
        if (parent && parent !== sp) parent.children.push(sp); else roots.push(sp);
      }
      // Spans arrive in start order, so children are already sorted by start.
      state.roots = roots;
      let t0 = Infinity, t1 = -Infinity;
      for (const sp of state.spans) { t0 = Math.min(t0, sp.start_us); t1 = Math.max(t1, sp.start_us + sp.duration_us); }
      state.t0 = t0; state.t1 = Math.max(t1, t0 + 0.001);
    }

    function computeCritical() {
      // Walks back from each span's end: the child that finished last before the cursor is
      // on the critical path, then the one that finished before that child started, and so on.
      const crit = new Set();
      const stack = state.roots.slice();
      while (stack.length) {
        const node = stack.pop();
        if (crit.has(node.span_id)) continue;
        crit.add(node.span_id);
        let cursor = node.start_us + node.duration_us;
        const kids = node.children.slice().sort((a, b) => (b.start_us + b.duration_us) - (a.start_us + a.duration_us));
        for (const k of kids) {
          const end = k.start_us + k.duration_us;
          if (end <= cursor + 0.001 && k.start_us >= node.start_us - 0.001) { stack.push(k); cursor = k.start_us; }
        }
      }
      state.critical = crit;
    }

    function renderHeader() {
      clear(header);
      const first = state.roots[0];
      const services = new Set(state.spans.map(x => x.service));
      const errors = state.spans.filter(x => x.error).length;
      header.appendChild(h('h1', null, first ? h('span', { text: first.service + ': ' + first.name }) : 'Trace', ' ', h('code', { class: 'trace-id', text: traceId })));
      header.appendChild(h('p', { class: 'facts' },
        h('span', { text: 'Start ' + (first ? fmtTime(state.t0) : '-') }), ' · ',
        h('span', { id: 'trace-duration', text: 'Duration ' + fmtDur(state.t1 - state.t0) }), ' · ',
        h('span', { id: 'trace-span-count', text: state.spans.length + ' spans' }), ' · ',
        h('span', { text: services.size + ' services' }), ' · ',
        h('span', { class: errors ? 'errors' : '', text: errors + ' errors' })));
    }

    function renderRuler() {
      clear(ruler);
      for (let i = 0; i <= 4; i++) {
        const tick = h('span', { class: 'tick' + (i === 0 ? ' first' : (i === 4 ? ' last' : '')), text: fmtDur((state.t1 - state.t0) * i / 4) });
        tick.style.left = (i * 25) + '%';
        ruler.appendChild(tick);
      }
    }

    function renderMinimap() {
      const w = minimap.clientWidth || 800;
      minimap.width = w;
      const ctx = minimap.getContext('2d');
      ctx.clearRect(0, 0, w, 40);
      const n = state.spans.length;
      const span = state.t1 - state.t0;
      for (let i = 0; i < n; i++) {
        const sp = state.spans[i];
        const y = Math.floor(i * 40 / n);
        ctx.fillStyle = sp.error ? '#d33' : svcColor(sp.service);
        ctx.fillRect((sp.start_us - state.t0) / span * w, y, Math.max(1, sp.duration_us / span * w), 1);
      }
    }

    function rowFor(item) {
      const sp = item.node;
      const hasKids = sp.children.length > 0;
      const toggle = h('button', { type: 'button', class: 'toggle', text: hasKids ? (state.collapsed.has(sp.span_id) ? '▸' : '▾') : '' });
      if (hasKids) toggle.addEventListener('click', (ev) => { ev.stopPropagation(); toggleCollapse(sp.span_id); });
      else toggle.disabled = true;
      const name = h('div', { class: 'name' });
      name.style.paddingLeft = (item.depth * 14) + 'px';
      const dot = h('span', { class: 'svc-dot' });
      dot.style.background = svcColor(sp.service);
      name.appendChild(toggle);
      name.appendChild(dot);
      name.appendChild(h('span', { class: 'svc', text: sp.service }));
      name.appendChild(h('span', { class: 'op', text: sp.name }));
      if (sp.error) name.appendChild(h('span', { class: 'err-mark', title: 'error', text: '!' }));
      const total = state.t1 - state.t0;
      const bar = h('div', { class: 'bar' });
      bar.style.left = (100 * (sp.start_us - state.t0) / total) + '%';
      bar.style.width = Math.max(0.05, 100 * sp.duration_us / total) + '%';
      bar.style.background = sp.error ? '#d33' : svcColor(sp.service);
      bar.dataset.widthPct = String(100 * sp.duration_us / total);
      const lane = h('div', { class: 'lane' }, bar, h('span', { class: 'bar-label', text: fmtDur(sp.duration_us) }));
      const cls = ['row'];
      if (sp.error) cls.push('error');
      if (state.selected === sp.span_id) cls.push('selected');
      if (state.matches.has(sp.span_id)) cls.push('match');
      if (state.critical && state.critical.has(sp.span_id)) cls.push('critical');
      const row = h('div', { class: cls.join(' '), id: 'span-' + sp.span_id, dataset: { spanId: sp.span_id, depth: String(item.depth), parent: sp.parent_span_id || '' } }, name, lane);
      row.addEventListener('click', () => select(sp.span_id, false));
      return row;
    }

    // Only the rows in view (and 10 either side) exist. Scrolling keeps the rows still in
    // range and builds only the ones coming into view; any change of state rebuilds them all.
    let lastRange = '';
    let rendered = new Map();
    function paint(force) {
      const top = viewport.scrollTop;
      const height = viewport.clientHeight || 600;
      const from = Math.max(0, Math.floor(top / ROW_H) - 10);
      const to = Math.min(state.rows.length, Math.ceil((top + height) / ROW_H) + 10);
      const key = from + ':' + to;
      if (!force && key === lastRange) return;
      lastRange = key;
      const next = new Map();
      const frag = document.createDocumentFragment();
      for (let i = from; i < to; i++) {
        const item = state.rows[i];
        const el = (!force && rendered.get(item.node.span_id)) || rowFor(item);
        next.set(item.node.span_id, el);
        frag.appendChild(el);
      }
      clear(rowsEl);
      rowsEl.style.transform = 'translateY(' + (from * ROW_H) + 'px)';
      rowsEl.appendChild(frag);
      rendered = next;
    }
    function relayout() {
      state.rows = visibleTree();
      spacer.style.height = (state.rows.length * ROW_H) + 'px';
      paint(true);
    }
    viewport.addEventListener('scroll', () => paint(false), { passive: true });
    window.addEventListener('resize', () => { paint(true); renderMinimap(); });

    function toggleCollapse(id) {
      if (state.collapsed.has(id)) state.collapsed.delete(id); else state.collapsed.add(id);
      relayout();
    }
    collapseAll.addEventListener('click', () => { for (const sp of state.spans) if (sp.children.length && sp.parent_span_id && state.byId.has(sp.parent_span_id)) state.collapsed.add(sp.span_id); relayout(); });
    expandAll.addEventListener('click', () => { state.collapsed.clear(); relayout(); });

    function reveal(id) {
      // Opens every collapsed ancestor, leaves focus if the span is outside it, then
      // scrolls its row into view.
      let sp = state.byId.get(id);
      if (!sp) return;
      if (state.focus && !isUnder(id, state.focus)) { state.focus = null; unfocus.hidden = true; }
      let parent = sp.parent_span_id && state.byId.get(sp.parent_span_id);
      let guard = 0;
      while (parent && guard++ < 100000) { state.collapsed.delete(parent.span_id); parent = parent.parent_span_id && state.byId.get(parent.parent_span_id); }
      relayout();
      const idx = state.rows.findIndex(r => r.node.span_id === id);
      if (idx >= 0) {
        const top = idx * ROW_H;
        if (top < viewport.scrollTop || top > viewport.scrollTop + viewport.clientHeight - ROW_H) viewport.scrollTop = Math.max(0, top - viewport.clientHeight / 3);
        paint(true);
      }
    }
    function isUnder(id, ancestor) {
      let sp = state.byId.get(id); let guard = 0;
      while (sp && guard++ < 100000) { if (sp.span_id === ancestor) return true; sp = sp.parent_span_id && state.byId.get(sp.parent_span_id); }
      return false;
    }

    function select(id, scroll) {
      state.selected = id;
      const url = '/trace/' + traceId + '?uiFind=' + id;
      history.replaceState(null, '', url);
      if (scroll) reveal(id); else paint(true);
      renderDetails(state.byId.get(id));
    }

    async function renderDetails(sp) {
      clear(details);
      if (!sp) return;
      const focusBtn = h('button', { type: 'button', id: 'focus-subtree', text: 'Focus on this subtree' });
      focusBtn.addEventListener('click', () => { state.focus = sp.span_id; unfocus.hidden = false; viewport.scrollTop = 0; relayout(); });
      const link = h('a', { href: '/trace/' + traceId + '?uiFind=' + sp.span_id, id: 'span-link', text: 'Link to this span' });
      details.appendChild(h('h2', { id: 'detail-title' }, h('span', { class: 'svc', text: sp.service }), ' ', h('span', { text: sp.name })));
      details.appendChild(h('p', { class: 'facts' },
        h('span', { text: 'Span ' + sp.span_id }), ' · ',
        h('span', { text: 'offset ' + fmtDur(sp.start_us - state.t0) }), ' · ',
        h('span', { text: 'duration ' + fmtDur(sp.duration_us) }), ' · ',
        h('span', { text: sp.kind }), ' · ',
        h('span', { class: sp.error ? 'errors' : '', text: 'status ' + sp.status + (sp.status_message ? ': ' + sp.status_message : '') })));
      details.appendChild(h('p', null, link, ' ', focusBtn));
      details.appendChild(h('h3', { text: 'Attributes' }));
      const attrs = kvTable(sp.attributes, 'attributes'); attrs.id = 'detail-attributes';
      details.appendChild(attrs);
      details.appendChild(h('h3', { text: 'Resource' }));
      const res = Object.assign({}, sp.resource.attributes || {});
      if (sp.resource['service.version']) res['service.version'] = sp.resource['service.version'];
      if (sp.resource['service.instance.id']) res['service.instance.id'] = sp.resource['service.instance.id'];
      if ((sp.resource['service.dependencies'] || []).length) res['service.dependencies'] = sp.resource['service.dependencies'].join(', ');
      res['otel.scope.name'] = sp.scope;
      const resT = kvTable(res, 'resource'); resT.id = 'detail-resource';
      details.appendChild(resT);
      details.appendChild(h('h3', { text: 'Events (' + sp.events.length + ')' }));
      const evList = h('ul', { class: 'events', id: 'detail-events' });
      for (const e of sp.events) evList.appendChild(h('li', null, h('span', { class: 'muted', text: '+' + fmtDur(e.time_us - state.t0) + ' ' }), h('strong', { text: e.name }), kvTable(e.attributes)));
      details.appendChild(evList);
      details.appendChild(h('h3', { text: 'Links (' + sp.links.length + ')' }));
      const linkList = h('ul', { class: 'links', id: 'detail-links' });
      for (const l of sp.links) linkList.appendChild(h('li', null, h('a', { href: '/trace/' + l.trace_id + '?uiFind=' + l.span_id, text: l.trace_id + ' / ' + l.span_id })));
      details.appendChild(linkList);
      details.appendChild(h('h3', { text: 'Logs in this span' }));
      const logs = h('div', { id: 'detail-logs' }, h('p', { class: 'muted', text: 'Loading…' }));
      details.appendChild(logs);
      try {
        const r = await api('/api/v1/logs?trace_id=' + traceId + '&span_id=' + sp.span_id + '&limit=500');
        if (state.selected !== sp.span_id) return;
        clear(logs);
        if (!r.logs.length) logs.appendChild(h('p', { class: 'muted', text: 'No log records were emitted inside this span.' }));
        const list = h('ul', { class: 'span-logs' });
        for (const l of r.logs.slice().reverse()) {
          list.appendChild(h('li', { class: 'log level-' + String(l.level).toLowerCase() },
            h('span', { class: 'muted', text: '+' + fmtDur(l.time_us - state.t0) + ' ' }),
            h('span', { class: 'level', text: l.level }), ' ',
            h('span', { class: 'body', text: l.body }),
            Object.keys(l.attributes || {}).length ? kvTable(l.attributes) : null));
        }
        logs.appendChild(list);
      } catch (e) { clear(logs); logs.appendChild(errorBox(e)); }
    }

    function spanMatches(sp, term) {
      const eq = term.indexOf('=');
      if (eq > 0) {
        const k = term.slice(0, eq).trim(), v = term.slice(eq + 1).trim();
        const a = sp.attributes[k] !== undefined ? sp.attributes[k] : (sp.resource.attributes || {})[k];
        if (a !== undefined && valueText(a).toLowerCase() === v) return true;
      }
      if (sp.span_id === term || sp.name.toLowerCase().includes(term) || sp.service.toLowerCase().includes(term)) return true;
      for (const k of Object.keys(sp.attributes)) {
        if (k.toLowerCase().includes(term) || valueText(sp.attributes[k]).toLowerCase().includes(term)) return true;
      }
      return false;
    }
    function runFind() {
      const term = find.value.trim().toLowerCase();
      state.matches = new Set(); state.matchList = []; state.matchAt = -1;
      if (term) for (const sp of state.spans) if (spanMatches(sp, term)) { state.matches.add(sp.span_id); state.matchList.push(sp.span_id); }
      findCount.textContent = term ? state.matchList.length + ' matches' : '';
      paint(true);
    }
    function step(dir) {
      if (!state.matchList.length) return;
      state.matchAt = (state.matchAt + dir + state.matchList.length) % state.matchList.length;
      select(state.matchList[state.matchAt], true);
    }
    find.addEventListener('input', runFind);
    find.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') step(ev.shiftKey ? -1 : 1); });
    prev.addEventListener('click', () => step(-1));
    next.addEventListener('click', () => step(1));
    critBox.addEventListener('change', () => { if (critBox.checked) computeCritical(); else state.critical = null; paint(true); });
    unfocus.addEventListener('click', () => { state.focus = null; unfocus.hidden = true; relayout(); if (state.selected) reveal(state.selected); });

    rerender = () => { renderHeader(); renderRuler(); if (state.selected) renderDetails(state.byId.get(state.selected)); };

    // Pages through the trace: the first window paints at once, the rest fills in behind. A
    // deep link to a span asks first for the window around it, so that a span deep inside a
    // huge trace shows at once.
    let cursor = null;
    let firstPaint = true;
    let targetShown = false;
    function afterPaint() {
      if (!firstPaint) return;
      firstPaint = false;
      requestAnimationFrame(() => { window.__dlogFirstRows = performance.now(); document.body.dataset.traceState = 'painted'; });
    }
    try {
      if (/^[0-9a-f]{16}$/.test(target)) {
        try {
          const win = await api('/api/v1/traces/' + traceId + '/spans?limit=' + PAGE + '&around=' + target);
          for (const sp of win.spans) { state.spans.push(sp); state.byId.set(sp.span_id, sp); }
          if (state.spans.length) {
            buildTree(); renderHeader(); renderRuler(); renderMinimap(); relayout();
            targetShown = true; select(target, true);
            status.textContent = 'Showing ' + state.spans.length + ' spans around the linked span, loading the rest…';
            afterPaint();
          }
        } catch (e) { /* not in this trace: load it from the start */ }
      }
      for (;;) {
        let url = '/api/v1/traces/' + traceId + '/spans?limit=' + PAGE;
        if (cursor) url += '&after_start_ns=' + cursor.after_start_ns + '&after_span=' + cursor.after_span;
        const page = await api(url);
        for (const sp of page.spans) { if (!state.byId.has(sp.span_id)) { state.spans.push(sp); state.byId.set(sp.span_id, sp); if (targetShown) state.unsorted = true; } }
        cursor = page.next;
        if (!state.spans.length) { clear(root); root.appendChild(h('h1', { text: 'Trace not found' })); root.appendChild(h('p', { class: 'muted', text: 'No span of trace ' + traceId + ' is in the store.' })); return; }
        buildTree();
        if (critBox.checked) computeCritical();
        renderHeader(); renderRuler(); renderMinimap();
        if (find.value) runFind();
        // Rows arriving above the selected span must not move it on the screen.
        const anchorIdx = state.selected ? state.rows.findIndex(r => r.node.span_id === state.selected) : -1;
        const anchorOffset = anchorIdx >= 0 ? anchorIdx * ROW_H - viewport.scrollTop : null;
        relayout();
        if (target && !targetShown && state.byId.has(target)) { targetShown = true; select(target, true); }
        else if (anchorOffset !== null && anchorOffset >= 0 && anchorOffset < viewport.clientHeight) {
          const idx = state.rows.findIndex(r => r.node.span_id === state.selected);
          if (idx >= 0) { viewport.scrollTop = idx * ROW_H - anchorOffset; paint(true); }
        }
        status.textContent = cursor ? ('Loaded ' + state.spans.length + ' spans, loading more…') : ('All ' + state.spans.length + ' spans loaded');
        afterPaint();
        if (!cursor || state.spans.length >= MAX_SPANS_IN_BROWSER) break;
      }
      if (cursor) status.textContent = 'Showing the first ' + state.spans.length + ' spans (the browser keeps at most ' + MAX_SPANS_IN_BROWSER + ')';
      document.body.dataset.traceState = 'loaded';
    } catch (e) {
      root.appendChild(errorBox(e));
    }
  }

  // ---------- logs ----------
  async function pageLogs() {
    setNav('logs');
    const p = params();
    const root = app(); clear(root);
    const text = h('input', { id: 'l-text', name: 'text', placeholder: 'text in the message', value: p.get('text') || '' });
    const service = h('select', { id: 'l-service', name: 'service' }, h('option', { value: '', text: 'any service' }));
    const level = h('select', { id: 'l-level', name: 'level' });
    for (const l of ['', 'TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL']) level.appendChild(h('option', { value: l, text: l || 'any level' }));
    level.value = p.get('level') || '';
    const trace = h('input', { id: 'l-trace', name: 'trace_id', placeholder: 'trace id', size: 34, value: p.get('trace_id') || '' });
    const lookback = h('select', { id: 'l-lookback', name: 'lookback' });
    for (const [v, label] of LOOKBACKS) lookback.appendChild(h('option', { value: v, text: label }));
    lookback.value = p.get('lookback') || '1h';
    const limit = h('input', { id: 'l-limit', name: 'limit', type: 'number', min: 1, max: 2000, value: p.get('limit') || '200', size: 5 });
    const live = h('input', { type: 'checkbox', id: 'l-live' });
    const form = h('form', { class: 'filters', id: 'logs-form' },
      h('label', { class: 'wide' }, 'Text ', text), h('label', null, 'Service ', service), h('label', null, 'Level ', level),
      h('label', null, 'Trace ', trace), h('label', null, 'Time ', lookback), h('label', null, 'Limit ', limit),
      h('button', { type: 'submit', text: 'Search logs', id: 'l-submit' }),
      h('label', { class: 'live' }, live, ' Live tail'));
    const status = h('p', { class: 'muted', id: 'logs-status' });
    const table = h('table', { class: 'logs', id: 'logs-table' });
    const tbody = h('tbody');
    table.appendChild(h('thead', null, h('tr', null, h('th', { text: 'Time' }), h('th', { text: 'Level' }), h('th', { text: 'Service' }), h('th', { text: 'Message' }), h('th', { text: 'Trace' }))));
    table.appendChild(tbody);
    root.appendChild(h('h1', { text: 'Logs' }));
    root.appendChild(form); root.appendChild(status); root.appendChild(table);
    try {
      const svcs = await api('/api/services');
      for (const name of svcs.data || []) service.appendChild(h('option', { value: name, text: name }));
    } catch (e) { /* logs can come from services without spans */ }
    if (p.get('service')) {
      if (![...service.options].some(o => o.value === p.get('service'))) service.appendChild(h('option', { value: p.get('service'), text: p.get('service') }));
      service.value = p.get('service');
    }

    function logRow(l) {
      const tr = h('tr', { class: 'log level-' + String(l.level).toLowerCase(), dataset: { id: l.id } },
        h('td', { class: 'time', text: fmtTime(l.time_us) }),
        h('td', { class: 'level', text: l.level }),
        h('td', { class: 'svc', text: l.service }),
        h('td', { class: 'body' }, longValue(l.body)),
        h('td', null, l.trace_id ? h('a', { class: 'trace-link', href: '/trace/' + l.trace_id + (l.span_id ? '?uiFind=' + l.span_id : ''), text: l.trace_id.slice(0, 7) + (l.span_id ? ' @ ' + l.span_id.slice(0, 6) : '') }) : ''));
      return tr;
    }
    function query() {
      const q = new URLSearchParams();
      for (const [k, el] of [['text', text], ['service', service], ['level', level], ['trace_id', trace], ['lookback', lookback], ['limit', limit]]) if (el.value && el.value.trim()) q.set(k, el.value.trim());
      return q;
    }
    let source = null;
    function stopTail() { if (source) { source.close(); source = null; } }
    async function run() {
      stopTail();
      const q = query();
      history.replaceState(null, '', '/logs?' + q.toString());
      status.textContent = 'Searching…';
      try {
        const r = await api('/api/v1/logs?' + q.toString());
        clear(tbody);
        for (const l of r.logs) tbody.appendChild(logRow(l));
        status.textContent = r.logs.length + ' records';
      } catch (e) { status.textContent = ''; clear(tbody); tbody.appendChild(h('tr', null, h('td', { colspan: 5 }, errorBox(e)))); }
      if (live.checked) startTail();
    }
    function startTail() {
      stopTail();
      const q = query(); q.delete('lookback'); q.delete('limit');
      source = new EventSource('/api/v1/logs/tail?' + q.toString());
      status.textContent = 'Live: new records appear at the top';
      document.body.dataset.tail = 'open';
      source.addEventListener('log', (ev) => {
        const l = JSON.parse(ev.data);
        if (tbody.querySelector('tr[data-id="' + CSS.escape(l.id) + '"]')) return;
        tbody.insertBefore(logRow(l), tbody.firstChild);
        while (tbody.children.length > 2000) tbody.removeChild(tbody.lastChild);
      });
      source.addEventListener('error', () => { status.textContent = 'Live tail interrupted; reconnecting…'; });
    }
    form.addEventListener('submit', (ev) => { ev.preventDefault(); run(); });
    live.addEventListener('change', () => { if (live.checked) startTail(); else { stopTail(); status.textContent = 'Live tail stopped'; } });
    rerender = () => run();
    run();
  }

  // ---------- service map ----------
  async function pageDependencies() {
    setNav('dependencies');
    const p = params();
    const root = app(); clear(root);
    const lookback = h('select', { id: 'd-lookback' });
    for (const [v, label] of LOOKBACKS) lookback.appendChild(h('option', { value: v, text: label }));
    lookback.value = p.get('lookback') || '1h';
    const holder = h('div', { id: 'map' });
    root.appendChild(h('h1', { text: 'Service map' }));
    root.appendChild(h('p', { class: 'legend' },
      h('span', { class: 'lg observed', text: '— observed and declared' }), ' ',
      h('span', { class: 'lg undeclared', text: '- - observed, not declared' }), ' ',
      h('span', { class: 'lg unobserved', text: '··· declared, not observed' }), ' · nodes: ',
      h('span', { class: 'lg-node status-UP', text: 'UP' }), ' ', h('span', { class: 'lg-node status-SILENT', text: 'SILENT' }), ' ',
      h('span', { class: 'lg-node status-DOWN', text: 'DOWN' }), ' ', h('span', { class: 'lg-node status-UNKNOWN', text: 'no heartbeat' })));
    root.appendChild(h('label', null, 'Time ', lookback));
    root.appendChild(holder);
    async function load() {
      history.replaceState(null, '', '/dependencies?lookback=' + lookback.value);
      clear(holder);
      try {
        const r = await api('/api/v1/dependencies?lookback=' + encodeURIComponent(lookback.value));
        holder.appendChild(drawMap(r));
        holder.appendChild(edgeTable(r));
      } catch (e) { holder.appendChild(errorBox(e)); }
    }
    lookback.addEventListener('change', load);
    rerender = load;
    load();
  }

  function fmtRate(perS) {
    if (perS >= 0.1) return perS.toFixed(2) + '/s';
    if (perS * 60 >= 0.1) return (perS * 60).toFixed(2) + '/min';
    return (perS * 3600).toFixed(2) + '/h';
  }
  function edgeKind(e) { return e.observed && e.declared ? 'observed' : (e.observed ? 'undeclared' : 'unobserved'); }

  function drawMap(r) {
    const W = 900, H = 520, cx = W / 2, cy = H / 2, R = Math.min(W, H) / 2 - 70;
    const svg = s('svg', { class: 'service-map', id: 'service-map', viewBox: '0 0 ' + W + ' ' + H });
    const defs = s('defs', {});
    for (const k of ['observed', 'undeclared', 'unobserved']) {
      const m = s('marker', { id: 'arrow-' + k, viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
      m.appendChild(s('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow ' + k }));
      defs.appendChild(m);
    }
    svg.appendChild(defs);
    const pos = new Map();
    const n = r.services.length || 1;
    r.services.forEach((svc, i) => {
      const a = (2 * Math.PI * i) / n - Math.PI / 2;
      pos.set(svc.name, [cx + R * Math.cos(a), cy + R * Math.sin(a)]);
    });
    const NODE_R = 26;
    for (const e of r.edges) {
      const a = pos.get(e.caller), b = pos.get(e.callee);
      if (!a || !b) continue;
      const dx = b[0] - a[0], dy = b[1] - a[1], len = Math.hypot(dx, dy) || 1;
      const x1 = a[0] + dx / len * NODE_R, y1 = a[1] + dy / len * NODE_R, x2 = b[0] - dx / len * NODE_R, y2 = b[1] - dy / len * NODE_R;
      const kind = edgeKind(e);
      const g = s('g', { class: 'edge edge-' + kind, 'data-caller': e.caller, 'data-callee': e.callee, 'data-kind': kind });
      g.appendChild(s('line', { x1, y1, x2, y2, 'marker-end': 'url(#arrow-' + kind + ')' }));
      const label = e.observed ? (e.calls + ' calls · ' + fmtRate(e.rate_per_s) + ' · ' + (100 * e.error_rate).toFixed(1) + '% err' + (e.p95_us != null ? ' · p95 ' + fmtDur(e.p95_us) : '')) : 'declared, not seen';
      // Labels sit a third of the way along, so that crossing edges keep theirs apart.
      g.appendChild(s('text', { x: x1 + (x2 - x1) / 3, y: y1 + (y2 - y1) / 3 - 4, class: 'edge-label', text: label }));
      g.appendChild(s('title', { text: e.caller + ' → ' + e.callee + ': ' + e.calls + ' calls, ' + e.errors + ' errors' }));
      svg.appendChild(g);
    }
    for (const svc of r.services) {
      const [x, y] = pos.get(svc.name);
      const a = s('a', { href: '/search?service=' + encodeURIComponent(svc.name), class: 'node status-' + svc.status, 'data-service': svc.name, 'data-status': svc.status });
      a.appendChild(s('circle', { cx: x, cy: y, r: NODE_R }));
      a.appendChild(s('text', { x, y: y + NODE_R + 14, class: 'node-label', text: svc.name }));
      a.appendChild(s('title', { text: svc.name + ': ' + svc.status + ' (click to search its traces)' }));
      svg.appendChild(a);
    }
    return svg;
  }

  function edgeTable(r) {
    const t = h('table', { class: 'edges', id: 'edge-table' });
    t.appendChild(h('thead', null, h('tr', null, ['Caller', 'Callee', 'Calls', 'Rate', 'Errors', 'Error %', 'p95 (sampled)', 'Edge'].map(x => h('th', { text: x })))));
    const tb = h('tbody');
    for (const e of r.edges) {
      const kind = edgeKind(e);
      tb.appendChild(h('tr', { class: 'edge-row ' + kind, dataset: { caller: e.caller, callee: e.callee, kind } },
        h('td', { text: e.caller }), h('td', { text: e.callee }), h('td', { text: e.calls }),
        h('td', { text: fmtRate(e.rate_per_s) }), h('td', { text: e.errors }),
        h('td', { text: (100 * e.error_rate).toFixed(1) + '%' }),
        h('td', { class: 'p95', title: e.p95_samples ? 'from ' + e.p95_samples + ' calls in the newest ' + r.latency_sample.traces + ' traces' : '', text: e.p95_us != null ? fmtDur(e.p95_us) : '' }),
        h('td', { text: kind === 'observed' ? 'observed, declared' : (kind === 'undeclared' ? 'observed, NOT declared' : 'declared, NOT observed') })));
    }
    t.appendChild(tb);
    return t;
  }

  // ---------- alerts ----------
  async function pageAlerts() {
    setNav('alerts');
    const root = app(); clear(root);
    const state = h('select', { id: 'a-state' });
    for (const [v, l] of [['', 'firing and resolved'], ['firing', 'firing'], ['resolved', 'resolved']]) state.appendChild(h('option', { value: v, text: l }));
    state.value = params().get('state') || '';
    const holder = h('div', { id: 'alerts' });
    root.appendChild(h('h1', { text: 'Alerts' }));
    root.appendChild(h('label', null, 'Show ', state));
    // Silence form: a service, a rule, or both, for a duration.
    const sService = h('input', { id: 's-service', placeholder: 'service', size: 16 });
    const sRule = h('input', { id: 's-rule', placeholder: 'rule (any)', size: 16 });
    const sDuration = h('select', { id: 's-duration' });
    for (const d of ['15m', '1h', '2h', '4h', '12h', '24h', '168h']) sDuration.appendChild(h('option', { value: d, text: d }));
    sDuration.value = '1h';
    const sComment = h('input', { id: 's-comment', placeholder: 'comment', size: 24 });
    const sBy = h('input', { id: 's-by', placeholder: 'your name', size: 12, value: localStorage.getItem('dlog.user') || '' });
    const sMsg = h('span', { id: 's-msg', class: 'muted' });
    async function createSilence(service, rule, duration, comment) {
      try {
        if (sBy.value) localStorage.setItem('dlog.user', sBy.value);
        await send('POST', '/api/v1/silences', { service: service || null, rule: rule || null, duration, comment, created_by: sBy.value || null });
        sMsg.textContent = 'silenced ' + [service, rule].filter(Boolean).join(' · ') + ' for ' + duration;
        await load();
      } catch (e) { sMsg.textContent = String(e.message || e); }
    }
    const form = h('form', { id: 'silence-form', class: 'silence-form', on: { submit: (ev) => { ev.preventDefault(); createSilence(sService.value.trim(), sRule.value.trim(), sDuration.value, sComment.value); } } },
      h('strong', { text: 'Silence ' }), sService, ' ', sRule, ' for ', sDuration, ' ', sComment, ' by ', sBy, ' ',
      h('button', { type: 'submit', id: 's-submit', text: 'Silence' }), ' ', sMsg);
    root.appendChild(form);
    root.appendChild(holder);
    // With tokens, the author is the token's name and a read token may not change anything.
    let readOnly = false;
    try {
      const me = await api('/api/v1/whoami');
      if (me.name) {
        sBy.hidden = true;
        sBy.value = '';
        sBy.after(h('strong', { id: 's-as', text: me.name + ' (' + me.role + ')' }));
      }
      if (me.role === 'read') {
        readOnly = true;
        form.querySelector('#s-submit').disabled = true;
        sMsg.textContent = 'read-only token: silencing and acknowledging need an admin token';
      }
    } catch (e) { /* an older viewer: keep the form as it is */ }
    async function load() {
      try {
        const r = await api('/api/v1/alerts' + (state.value ? '?state=' + state.value : ''));
        const sil = await api('/api/v1/silences');
        clear(holder);
        holder.appendChild(h('h2', { text: 'Silences (' + sil.silences.filter(x => x.active).length + ' active)' }));
        const st = h('table', { class: 'silences', id: 'silences-table' });
        st.appendChild(h('thead', null, h('tr', null, ['', 'Service', 'Rule', 'Starts', 'Expires', 'By', 'Comment', ''].map(x => h('th', { text: x })))));
        const sb = h('tbody');
        for (const x of sil.silences) {
          const expire = x.active && !readOnly ? h('button', { class: 'expire', text: 'Expire', on: { click: async () => { try { await send('DELETE', '/api/v1/silences/' + encodeURIComponent(x.id)); await load(); } catch (e) { sMsg.textContent = String(e.message || e); } } } }) : null;
          sb.appendChild(h('tr', { class: 'silence ' + (x.active ? 'active' : 'expired'), dataset: { id: x.id, service: x.service || '', rule: x.rule || '' } },
            h('td', { text: x.active ? 'active' : 'expired' }), h('td', { text: x.service || 'any' }), h('td', { text: x.rule || 'any' }),
            h('td', { text: fmtTime(x.starts_us) }), h('td', { class: 'expires', text: fmtTime(x.ends_us) }),
            h('td', { text: x.created_by }), h('td', { text: x.comment }), h('td', null, expire)));
        }
        st.appendChild(sb);
        holder.appendChild(st);
        holder.appendChild(h('h2', { text: 'Incidents (' + r.incidents.length + ')' }));
        const byId = new Map(r.alerts.map(a => [a.id, a]));
        const inc = h('ul', { class: 'incidents', id: 'incidents' });
        for (const i of r.incidents) {
          const beneath = h('ul', { class: 'grouped' });
          for (const id of i.alert_ids) { const a = byId.get(id); if (a) beneath.appendChild(h('li', { text: a.service + ' · ' + a.rule + ': ' + a.summary })); }
          inc.appendChild(h('li', { class: 'incident ' + i.state, dataset: { id: i.id } },
            h('strong', { text: i.state.toUpperCase() + ' ' }), h('span', { text: 'root cause: ' + (i.root_cause || 'unknown') }),
            h('span', { class: 'muted', text: ' · ' + i.services.join(', ') + ' · since ' + fmtTime(i.first_seen_us) }), beneath));
        }
        holder.appendChild(inc);
        holder.appendChild(h('h2', { text: 'Alerts (' + r.alerts.length + ')' }));
        const t = h('table', { class: 'alerts', id: 'alerts-table' });
        t.appendChild(h('thead', null, h('tr', null, ['State', 'Severity', 'Service', 'Rule', 'Summary', 'First seen', 'Last seen', 'Count', 'Example traces / actions'].map(x => h('th', { text: x })))));
        const tb = h('tbody');
        for (const a of r.alerts) {
          const traces = h('td', { class: 'examples' });
          for (const tid of a.example_trace_ids.slice(0, 5)) traces.appendChild(h('a', { href: '/trace/' + tid, class: 'trace-link', text: tid.slice(0, 7) }), ' ');
          const marks = h('td', { class: 'state' }, a.state);
          if (a.silenced) marks.appendChild(h('span', { class: 'badge silenced', text: ' silenced' }));
          if (a.ack) marks.appendChild(h('span', { class: 'badge acked', title: a.ack.comment || '', text: ' acked by ' + a.ack.by }));
          const actions = h('div', { class: 'actions' });
          if (a.state === 'firing' && !a.ack && !readOnly) actions.appendChild(h('button', { class: 'ack', text: 'Ack', on: { click: async () => { try { await send('POST', '/api/v1/acks', { alert_id: a.id, by: sBy.value || null }); await load(); } catch (e) { sMsg.textContent = String(e.message || e); } } } }));
          if (!a.silenced && !readOnly) actions.appendChild(h('button', { class: 'silence-service', text: 'Silence service 1h', on: { click: () => createSilence(a.service, '', '1h', 'from alert ' + a.id) } }));
          traces.appendChild(actions);
          tb.appendChild(h('tr', { class: 'alert ' + a.state + ' sev-' + a.severity + (a.silenced ? ' silenced' : '') + (a.ack ? ' acked' : ''), dataset: { id: a.id, rule: a.rule, service: a.service } },
            marks, h('td', { text: a.severity }), h('td', { text: a.service + (a.instance ? ' (' + a.instance + ')' : '') }),
            h('td', { text: a.rule }), h('td', null, longValue(a.summary)), h('td', { text: fmtTime(a.first_seen_us) }),
            h('td', { text: fmtTime(a.last_seen_us) }), h('td', { text: a.occurrences }), traces));
        }
        t.appendChild(tb);
        holder.appendChild(t);
      } catch (e) { clear(holder); holder.appendChild(errorBox(e)); }
    }
    state.addEventListener('change', load);
    rerender = load;
    await load();
    // New alerts appear without a reload.
    setInterval(() => { if (!document.hidden) load(); }, 5000);
  }

  // ---------- routing ----------
  let rerender = () => {};
  function route() {
    const path = location.pathname;
    const m = path.match(/^\/trace\/([0-9a-fA-F]{1,32})\/?$/);
    if (m) return pageTrace(m[1].toLowerCase().padStart(32, '0'));
    if (path === '/logs') return pageLogs();
    if (path === '/dependencies') return pageDependencies();
    if (path === '/alerts') return pageAlerts();
    return pageSearch();
  }
  document.addEventListener('DOMContentLoaded', () => {
    const box = tzBox();
    if (box) {
      box.checked = useUtc();
      box.addEventListener('change', () => { localStorage.setItem('dlog.utc', box.checked ? '1' : '0'); rerender(); });
    }
    route();
  });
})();
