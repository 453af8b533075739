// trainwatch dashboard: runs at /, a live session at /sessions/{id}, a
// stored run at /runs/{id}, runs side by side at /compare. Plain JS; charts
// by uPlot (vendored, served by the server). Live data arrives by
// Server-Sent Events and is drawn at most once per animation frame (newest
// wins). Everything a trainer or
// agent sends (ids, class names, messages) is shown with textContent, never
// parsed as HTML.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'trainwatch.token';
  const TILES = 16;
  const LATENCY_KEEP = 2000;

  // Receipt → paint latencies (ms) of painted frames, for the page's own
  // figure and for the browser test.
  const tw = (window.trainwatch = { latencies: [], paints: 0, frame: null, commands: [] });

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const na = (v, f) => (v === null || v === undefined || Number.isNaN(v) ? 'n/a' : f(v));
  const num = (d) => (v) => v.toFixed(d);
  const pct = (v) => v.toFixed(0) + ' %';
  const mb = (v) => (v >= 1024 ? (v / 1024).toFixed(1) + ' GiB' : v.toFixed(0) + ' MiB');
  function dur(s) {
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return `${h} h ${String(m).padStart(2, '0')} min`;
    if (m) return `${m} min ${String(r).padStart(2, '0')} s`;
    return `${r} s`;
  }
  function ago(ms) {
    const s = Math.max(0, ms / 1000);
    if (s < 2) return 'just now';
    if (s < 120) return `${Math.round(s)} s ago`;
    if (s < 7200) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }
  const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
  const stamp = (ms) => new Date(ms).toLocaleString([], { hour12: false });
  // A JSON read of the server's API; a refusal throws naming it.
  const getJson = (u) => fetch(u, { cache: 'no-store', credentials: 'same-origin' }).then(async (r) => {
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(`${u}: ${body.error || `${r.status} ${r.statusText}`}`);
    return body;
  });
  // Sets (or, when empty, removes) query parameters of the page's URL, so a
  // link shows what is shown.
  function setParams(pairs) {
    const u = new URLSearchParams(location.search);
    for (const [k, v] of pairs) {
      if (v) u.set(k, v);
      else u.delete(k);
    }
    const s = u.toString();
    history.replaceState(null, '', location.pathname + (s ? '?' + s : ''));
  }
  // Shows the chart boxes under `root` whose key contains one of the
  // comma-separated words of `input` (all when empty), and hides a group
  // left empty; the words go in the URL as `keys`. Returns the keys shown.
  function keyFilter(input, root) {
    const words = () => input.value.split(',').map((w) => w.trim()).filter(Boolean);
    const apply = () => {
      const ws = words();
      const shown = [];
      for (const box of root.querySelectorAll('.chart-box')) {
        const ok = !ws.length || ws.some((w) => box.dataset.key.includes(w));
        box.hidden = !ok;
        if (ok) shown.push(box.dataset.key);
      }
      for (const g of root.querySelectorAll('section.group')) {
        g.hidden = ![...g.querySelectorAll('.chart-box')].some((b) => !b.hidden);
      }
      return shown;
    };
    input.value = new URLSearchParams(location.search).get('keys') || '';
    input.addEventListener('input', () => {
      setParams([['keys', words().join(',')]]);
      apply();
    });
    return apply;
  }
  // A uPlot chart's width in its card.
  const chartWidth = (box) => Math.max(280, Math.min(620, box.clientWidth - 24 || 600));
  const nowMs = () => performance.timeOrigin + performance.now();
  function percentile(xs, p) {
    if (!xs.length) return null;
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
  }

  // "n / total" with a bar (the share `frac`, when total is known); n/a
  // when n is unknown.
  function progressCell(td, text, frac) {
    td.replaceChildren();
    if (text === null) {
      td.textContent = 'n/a';
      return td;
    }
    td.append(text);
    if (frac !== null) {
      const bar = el('span', 'bar');
      const fill = el('span');
      fill.style.width = Math.min(100, frac * 100) + '%';
      bar.append(fill);
      td.append(bar);
    }
    return td;
  }
  // A live row's position (0-based): `cur + 1` of `total`.
  const progress = (cur, total) => progressCell(el('td'),
    cur === null || cur === undefined ? null : total ? `${cur + 1} / ${total}` : `${cur + 1}`,
    cur === null || cur === undefined || !total ? null : (cur + 1) / total);
  function setConn(state, text) {
    const c = $('conn');
    c.className = 'conn ' + state;
    c.textContent = text;
  }

  // ------------------------------------------------------------ token --
  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  }
  function showTokenState() {
    $('token-state').textContent = token() ? 'token set for this tab' : 'no token';
  }
  // The token also goes in a cookie for reading (http_token_reads): event
  // streams and images cannot send a header. SameSite=Strict: a page on
  // another site cannot send it.
  const COOKIE = 'trainwatch_token';
  function setCookie(v, maxAge) {
    const secure = location.protocol === 'https:' ? '; Secure' : '';
    document.cookie = COOKIE + '=' + encodeURIComponent(v) + '; Path=/; SameSite=Strict' +
      (maxAge === undefined ? '' : '; Max-Age=' + maxAge) + secure;
  }
  let readsNeedToken = false;
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('token').value.trim();
    if (v) {
      sessionStorage.setItem(TOKEN_KEY, v);
      setCookie(v);
    }
    $('token').value = '';
    showTokenState();
    // Streams refused without the token start again with it.
    if (v && readsNeedToken) location.reload();
  });
  $('token-clear').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    setCookie('', 0);
    showTokenState();
  });
  showTokenState();
  if (token()) setCookie(token());
  // What the server offers: control mode, reads behind the token, a store.
  const capabilities = fetch('/api/control', { cache: 'no-store' })
    .then((r) => r.json())
    .catch(() => ({}));
  capabilities.then((c) => {
    readsNeedToken = c.reads === 'token';
    if (readsNeedToken && !token()) {
      $('token-state').textContent = 'this server needs the token to show its runs: enter it here';
      $('token-box').open = true;
    }
  });

  // --------------------------------------------------------- overview --
  function overview() {
    $('overview').hidden = false;
    document.title = 'trainwatch — runs';
    let rows = [];
    let skew = 0; // server clock − local clock, from the last event
    const es = new EventSource('/api/events');
    es.onopen = () => setConn('live', 'live');
    es.onerror = () => setConn('down', 'reconnecting…');
    es.addEventListener('sessions', (ev) => {
      const d = JSON.parse(ev.data);
      skew = d.server_ms - Date.now();
      rows = d.sessions;
      render();
      stored.live(rows);
    });
    const stored = storedRuns();
    function render() {
      const tb = $('runs');
      tb.replaceChildren();
      $('no-runs').hidden = rows.length > 0;
      for (const r of rows) {
        const tr = el('tr');
        tr.dataset.id = r.id;
        const name = el('td');
        const a = el('a', null, r.id);
        a.href = '/sessions/' + encodeURIComponent(r.id);
        name.append(a);
        const meta = [r.model_name, r.dataset_name, r.client].filter(Boolean).join(' · ');
        if (meta) name.append(el('div', 'muted small', meta));
        const st = el('td');
        st.append(el('span', 'badge ' + r.status, r.status));
        const fps = el('td', null, na(r.current_fps, num(1)));
        const loss = el('td', null, na(r.last_loss, num(4)));
        const seen = el('td', 'seen');
        seen.dataset.ms = r.last_seen_ms;
        tr.append(name, st, progress(r.epoch, r.total_epochs), progress(r.batch_idx, r.batches_per_epoch), fps, loss, seen);
        tb.append(tr);
      }
      renderSeen();
    }
    function renderSeen() {
      const now = Date.now() + skew;
      for (const td of document.querySelectorAll('#runs td.seen')) {
        td.textContent = ago(now - Number(td.dataset.ms));
      }
    }
    setInterval(renderSeen, 1000);
  }

  // Every run the store keeps, a page at a time (GET /api/runs), filtered
  // by the server; the filters are in the URL so a link shows the same
  // list. Rows of live runs follow the overview's pushed rows.
  function storedRuns() {
    const PAGE = 50;
    const params = new URLSearchParams(location.search);
    const q = $('rf-q'), device = $('rf-device'), status = $('rf-status');
    q.value = params.get('q') || '';
    device.value = params.get('device') || '';
    status.value = params.get('status') || '';
    // The order, by the server: a header's button sorts by its column,
    // again for the other way. Newest first when nothing is chosen.
    let sort = params.get('sort') || 'created';
    let order = params.get('order') || (sort === 'created' ? 'desc' : 'asc');
    const heads = [...document.querySelectorAll('#stored-head th[data-sort]')];
    const showOrder = () => {
      for (const th of heads) {
        if (th.dataset.sort === sort) th.setAttribute('aria-sort', order === 'asc' ? 'ascending' : 'descending');
        else th.removeAttribute('aria-sort');
      }
    };
    showOrder();
    for (const th of heads) {
      th.querySelector('button').addEventListener('click', () => {
        if (sort === th.dataset.sort) order = order === 'asc' ? 'desc' : 'asc';
        else {
          sort = th.dataset.sort;
          order = sort === 'created' || sort === 'points' ? 'desc' : 'asc';
        }
        showOrder();
        filtersChanged();
      });
    }
    let next = null, shown = [], enabled, loads = 0;
    const tried = new Set(); // live ids a reload was made for
    const when = (ms) => (ms ? stamp(ms) : 'n/a');
    const span = (ms) => (ms >= 0 ? dur(ms / 1000) : 'n/a');
    function query(cursor) {
      const u = new URLSearchParams();
      u.set('limit', PAGE);
      if (q.value) u.set('q', q.value);
      if (device.value) u.set('device', device.value);
      if (status.value) u.set('status', status.value);
      if (metric.value) u.set('metric', metric.value);
      if (metric.value && goal) u.set('goal', goal);
      if (sort !== 'created' || order !== 'desc') {
        u.set('sort', sort);
        u.set('order', order);
      }
      if (cursor) u.set('cursor', cursor);
      return '/api/runs?' + u;
    }
    const picked = new Set();
    const pickedChanged = () => {
      const a = $('rf-compare');
      a.hidden = picked.size < 2;
      a.href = '/compare?runs=' + [...picked].map(encodeURIComponent).join(',');
      a.textContent = `Compare ${picked.size} runs` + (picked.size > 20 ? ' (at most 20)' : '');
    };
    function row(r) {
      const tr = el('tr');
      tr.dataset.id = r.id;
      const pick = el('td');
      const box = el('input');
      box.type = 'checkbox';
      box.checked = picked.has(r.id);
      box.setAttribute('aria-label', 'compare ' + (r.name || r.id));
      box.addEventListener('change', () => {
        if (box.checked) picked.add(r.id);
        else picked.delete(r.id);
        pickedChanged();
      });
      pick.append(box);
      const name = el('td');
      const a = el('a', null, r.name || r.id);
      a.href = '/runs/' + encodeURIComponent(r.id);
      a.title = r.id;
      name.append(a);
      const st = el('td');
      st.append(el('span', 'badge ' + r.status.toUpperCase(), r.status));
      const started = r.started_ms || r.created_ms;
      const end = r.ended_ms || Date.now();
      const f = r.figures || {};
      let total = null;
      try {
        total = JSON.parse(r.config).total_epochs || null;
      } catch (_) { /* no config: no total */ }
      const best = el('td');
      if (f.metric) {
        best.textContent = na(f.metric.best, num(4));
        best.title = `${f.metric.key}: ${f.metric.goal} ${f.metric.best}, last ${f.metric.last}`;
      } else best.textContent = metric.value ? 'n/a' : '';
      const cells = {
        status: st,
        progress: progressCell(el('td'), total ? `${r.epochs} / ${total}` : String(r.epochs), total ? r.epochs / total : null),
        loss: el('td', null, na(f.last_loss, num(4))),
        fps: el('td', null, na(f.fps, num(1))),
      };
      tr.append(
        pick,
        name,
        el('td', null, r.device),
        el('td', null, r.model || 'n/a'),
        el('td', null, r.dataset || 'n/a'),
        st,
        el('td', null, when(started)),
        el('td', null, span(end - started)),
        cells.progress,
        cells.loss,
        best,
        cells.fps,
        el('td', null, String(r.points)),
      );
      rowCells.set(r.id, cells);
      return tr;
    }
    // The best-of metric: chosen from the keys the listed runs logged, in
    // the URL; better small or large (by its name unless chosen).
    const metric = $('rf-metric'), goalButton = $('rf-goal');
    const keysSeen = new Set();
    let goal = params.get('goal');
    const guessGoal = (k) => (/loss|err|perplexity|ppl|mse|mae|rmse|wer|cer|time|latency|dist/i.test(k) ? 'min' : 'max');
    const showGoal = () => {
      const g = goal || guessGoal(metric.value);
      goalButton.textContent = g;
      goalButton.hidden = !metric.value;
      const what = g === 'max' ? 'largest' : 'smallest';
      goalButton.setAttribute('aria-label', `best is the ${what} value`);
      goalButton.title = `best is the ${what} value; press for the other`;
      $('rf-best').textContent = metric.value ? `Best ${metric.value}` : 'Best';
    };
    function offerKeys(keys) {
      for (const k of keys) {
        if (keysSeen.has(k)) continue;
        keysSeen.add(k);
        const o = el('option', null, k);
        o.value = k;
        metric.append(o);
      }
    }
    let chosenMetric = !!params.get('metric');
    if (chosenMetric) {
      offerKeys([params.get('metric')]);
      metric.value = params.get('metric');
    }
    showGoal();
    metric.addEventListener('change', () => {
      chosenMetric = true;
      goal = null;
      showGoal();
      filtersChanged();
    });
    goalButton.addEventListener('click', () => {
      chosenMetric = true;
      goal = (goal || guessGoal(metric.value)) === 'max' ? 'min' : 'max';
      showGoal();
      filtersChanged();
    });
    const rowCells = new Map();
    let guessed = false;
    async function load(more) {
      const mine = ++loads;
      const r = await fetch(query(more ? next : null), { cache: 'no-store', credentials: 'same-origin' });
      const body = await r.json();
      if (mine !== loads) return; // a newer query answered first
      if (!r.ok) {
        $('rf-count').textContent = `cannot list runs (${r.status}): ${body.error || r.statusText}`;
        return;
      }
      if (!more) {
        shown = [];
        rowCells.clear();
      }
      shown = shown.concat(body.runs);
      offerKeys(body.keys || []);
      // No metric chosen yet: the first validation-like key, once.
      if (!metric.value && !guessed) {
        guessed = true;
        const k = [...keysSeen].find((x) => /^(val|valid|validation|eval|test)[/_.]/i.test(x));
        if (k) {
          metric.value = k; // a guess: the URL keeps only what is chosen
          showGoal();
          return load(false);
        }
      }
      next = body.next_cursor;
      const tb = $('stored');
      if (!more) tb.replaceChildren();
      for (const x of body.runs) tb.append(row(x));
      $('rf-more').hidden = !next;
      $('rf-count').textContent = `${shown.length} run${shown.length === 1 ? '' : 's'} shown${next ? ', older ones follow' : ''}`;
      tw.runs = shown.length;
    }
    let timer = null;
    function filtersChanged() {
      const chosen = sort !== 'created' || order !== 'desc';
      setParams([
        ['q', q.value], ['device', device.value], ['status', status.value],
        ['sort', chosen && sort], ['order', chosen && order],
        ['metric', chosenMetric && metric.value], ['goal', metric.value && goal],
      ]);
      tried.clear();
      clearTimeout(timer);
      timer = setTimeout(() => load(false).catch(() => {}), 200);
    }
    for (const input of [q, device]) input.addEventListener('input', filtersChanged);
    status.addEventListener('change', filtersChanged);
    $('rf').addEventListener('submit', (e) => e.preventDefault());
    $('rf-more').addEventListener('click', () => load(true).catch(() => {}));
    enabled = false;
    capabilities.then((c) => {
      enabled = !!c.store;
      $('stored-runs').hidden = !enabled;
      $('no-store').hidden = enabled;
      if (enabled) load(false).catch(() => {});
    });
    return {
      // The pushed live rows: each shown run that is live takes its status;
      // a live run not shown yet (a new one) reloads the first page, once
      // for each such run (one the filters leave out stays out).
      live(rows) {
        if (!enabled) return;
        let fresh = false;
        for (const l of rows) {
          const tr = document.querySelector(`#stored tr[data-id="${CSS.escape(l.id)}"]`);
          if (!tr) {
            if (!tried.has(l.id)) fresh = true;
            tried.add(l.id);
            continue;
          }
          const c = rowCells.get(l.id);
          if (!c) continue;
          const badge = c.status.firstChild;
          badge.className = 'badge ' + l.status;
          badge.textContent = l.status.toLowerCase();
          if (l.last_loss !== null) c.loss.textContent = num(4)(l.last_loss);
          if (l.current_fps !== null) c.fps.textContent = num(1)(l.current_fps);
          if (l.epoch !== null && l.total_epochs) {
            const part = l.batch_idx !== null && l.batches_per_epoch ? (l.batch_idx + 1) / l.batches_per_epoch : 0;
            progressCell(c.progress, `${l.epoch} / ${l.total_epochs}`, (l.epoch + part) / l.total_epochs);
          }
        }
        if (fresh && shown.length <= PAGE) load(false).catch(() => {});
      },
    };
  }

  // -------------------------------------------------------------- run --
  // A stored run (live or finished, after any restart): every named scalar
  // as its own uPlot chart, grouped by the prefix before '/'. Each series
  // comes downsampled by the server (min, max and last per bucket); a zoom
  // asks for its range again, at full resolution once it is narrow enough.
  function runView(id) {
    $('run').hidden = false;
    document.title = 'trainwatch — ' + id;
    tw.charts = {};
    const POINTS = 1000;
    const base = '/api/runs/' + encodeURIComponent(id);
    const fail = (e) => {
      $('r-error').hidden = false;
      $('r-error').textContent = String(e.message || e);
    };
    let classes = [];
    let perEpoch = 0; // batches_per_epoch of the run's config (0: unknown)
    const runRead = getJson(base);
    runRead.then((run) => {
      try {
        const c = JSON.parse(run.config);
        classes = c.class_names || [];
        perEpoch = c.batches_per_epoch || 0;
      } catch (_) { /* no names: class numbers are shown */ }
      $('r-name').textContent = run.name || run.id;
      if (run.status !== 'completed' && run.status !== 'failed') {
        $('r-live').href = '/sessions/' + encodeURIComponent(id);
        $('r-live').hidden = false;
      }
      $('r-status').textContent = run.status;
      $('r-status').className = 'badge ' + run.status.toUpperCase();
      $('r-meta').textContent = [run.device, run.model, run.dataset, `${run.points} points`, `${run.epochs} epochs`]
        .filter(Boolean).join(' · ');
      setConn('live', 'stored run');
    }).catch(fail);
    // Exponential moving average of the last values, debiased as
    // TensorBoard's smoothing is (weight 0: the values themselves).
    const params = new URLSearchParams(location.search);
    let weight = Math.min(0.99, Math.max(0, Number(params.get('smooth')) || 0));
    $('r-smooth').value = weight;
    $('r-smooth-v').textContent = weight;
    const ema = (vals) => {
      if (!weight) return vals;
      let s = 0;
      return vals.map((v, i) => {
        s = s * weight + (1 - weight) * v;
        return s / (1 - Math.pow(weight, i + 1));
      });
    };
    // The x axis: step, wall-clock time, or seconds since the run's first
    // point; and a log y scale (values at or below 0 are left out there).
    const AXES = {
      step: { label: 'step', x: (b) => b.step },
      // The step as epochs, the way the trainer counts them (a batch's
      // loss is logged at epoch × batches_per_epoch + batch).
      epoch: { label: 'epoch', x: (b) => b.step / perEpoch },
      wall: { label: 'wall time', x: (b) => b.wall_ms / 1000 },
      relative: { label: 's since the first point', x: (b) => (b.wall_ms - t0) / 1000 },
    };
    let t0 = 0;
    let xAxis = AXES[params.get('x')] ? params.get('x') : 'step';
    let logScale = params.get('log') === '1';
    $('r-x').value = xAxis;
    $('r-log').checked = logScale;
    const positive = (v) => (logScale && !(v > 0) ? null : v);
    const columns = (series) => {
      const b = series.buckets;
      const x = AXES[xAxis].x;
      return [b.map(x), ema(b.map((p) => p.last)).map(positive), b.map((p) => positive(p.min)), b.map((p) => positive(p.max))];
    };
    const rebuilds = [];
    $('r-x').addEventListener('change', () => {
      xAxis = $('r-x').value;
      setParams([['x', xAxis !== 'step' && xAxis]]);
      for (const f of rebuilds) f();
    });
    $('r-log').addEventListener('change', () => {
      logScale = $('r-log').checked;
      setParams([['log', logScale && '1']]);
      for (const f of rebuilds) f();
    });
    const redraws = [];
    // Axis labels with three significant digits (small losses stay apart).
    const tick = (v) => (v === null ? '' : Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : String(+v.toPrecision(3)));
    $('r-smooth').addEventListener('input', () => {
      weight = Number($('r-smooth').value);
      $('r-smooth-v').textContent = weight;
      setParams([['smooth', weight]]);
      for (const f of redraws) f();
    });
    function chart(key, series, into) {
      const box = el('section', 'card chart-box');
      box.dataset.key = key;
      box.append(el('h2', null, key));
      into.append(box);
      const state = { points: series.buckets.length, downsampled: series.downsampled, requests: [] };
      let shown = series;
      tw.charts[key] = state;
      let full = true;
      let plot = null;
      // The step of the shown bucket nearest to x (any x axis).
      const stepAt = (x) => {
        const xs = plot.data[0];
        let i = 0;
        while (i < xs.length - 1 && xs[i] < x) i++;
        return shown.buckets[Math.min(i, shown.buckets.length - 1)].step;
      };
      const make = () => {
        if (plot) plot.destroy();
        const ax = AXES[xAxis];
        state.axis = xAxis;
        state.log = logScale;
        plot = new uPlot({
          width: chartWidth(box),
          height: 220,
          scales: { x: { time: xAxis === 'wall' }, y: logScale ? { distr: 3 } : {} },
          axes: [{ label: ax.label }, { size: 60, values: (u, vals) => vals.map(tick) }],
          series: [
            { label: ax.label },
            { label: 'last', stroke: '#0072b2', width: 1.5 },
            { label: 'min', stroke: '#56b4e9', width: 1, dash: [4, 3] },
            { label: 'max', stroke: '#e69f00', width: 1, dash: [4, 3] },
          ],
          cursor: { drag: { x: true, y: false } },
          hooks: {
            setSelect: [(u) => {
              if (u.select.width < 2) return;
              const a = stepAt(u.posToVal(u.select.left, 'x'));
              const b = stepAt(u.posToVal(u.select.left + u.select.width, 'x'));
              u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
              load(Math.min(a, b), Math.max(a, b));
            }],
          },
        }, columns(shown), box);
        state.x0 = plot.data[0][0];
      };
      make();
      function load(from, to) {
        const q = new URLSearchParams({ keys: key, points: POINTS });
        if (from !== undefined) { q.set('from', from); q.set('to', to); }
        state.requests.push(q.toString());
        return getJson(`${base}/scalars?${q}`).then((body) => {
          const s = body.series.find((x) => x.key === key);
          if (!s) return;
          full = from === undefined;
          state.points = s.buckets.length;
          state.downsampled = s.downsampled;
          state.range = full ? null : [from, to];
          shown = s;
          plot.setData(columns(s));
        }).catch(fail);
      }
      box.addEventListener('dblclick', () => { if (!full) load(); });
      state.zoom = (from, to) => load(from, to);
      state.reset = () => (full ? Promise.resolve() : load());
      redraws.push(() => plot.setData(columns(shown)));
      rebuilds.push(make);
      // Live points ([step, wall_ms, value]) after the last shown step, as
      // one-point buckets; returns how many were new. A zoomed chart keeps
      // its range (a reset reads the store again, with them).
      state.append = (pts) => {
        const b = shown.buckets;
        let n = 0;
        for (const [step, wall, v] of pts) {
          if (b.length && step <= b[b.length - 1].step) continue;
          if (full) b.push({ step, wall_ms: wall, min: v, max: v, last: v, count: 1 });
          n++;
        }
        state.points = b.length;
        // Far more than a chart needs: the store's downsampled view again.
        if (full && b.length > 4 * POINTS && !state.reloading) state.reload();
        return n;
      };
      state.redraw = () => { if (full) plot.setData(columns(shown)); };
      state.reload = () => {
        if (!full) return;
        state.reloading = true;
        load().finally(() => { state.reloading = false; });
      };
      // What is drawn, for tests: the first values of the line, the x
      // range.
      state.line = (n) => plot.data[1].slice(0, n);
      state.xEnds = () => [plot.data[0][0], plot.data[0][plot.data[0].length - 1]];
    }
    // The stored image samples (each epoch's last batch and one every
    // images_every_s), one at a time by a scrubber, as the live grid shows
    // a batch: the image, predicted class and confidence, true class.
    getJson(`${base}/images`).then((body) => {
      const samples = body.images;
      const slider = $('r-img');
      tw.images = { count: samples.length };
      if (!samples.length) {
        $('r-no-img').hidden = false;
        slider.disabled = true;
        return;
      }
      slider.max = samples.length - 1;
      slider.value = samples.length - 1;
      const name = (c) => classes[c] || `class ${c}`;
      const show = () => {
        const s = samples[Number(slider.value)];
        $('r-img-at').textContent = `epoch ${s.epoch}, step ${s.step}, ${stamp(s.wall_ms)} (${Number(slider.value) + 1} of ${samples.length})`;
        const tiles = s.jpegs.map((j, i) => {
          const t = el('figure', 'tile');
          const img = el('img');
          img.src = j.url;
          img.alt = `sample ${i}`;
          const p = s.predictions[i];
          const truth = s.labels[i];
          const cap = el('figcaption', 'lbl');
          if (p) {
            const ok = truth === undefined || p.class === truth;
            t.classList.add(ok ? 'right' : 'wrong');
            cap.append(el('div', 'pred', `${name(p.class)} ${(p.confidence * 100).toFixed(0)}%`));
          }
          if (truth !== undefined) cap.append(el('div', 'truth', `true: ${name(truth)}`));
          t.append(img, cap);
          return t;
        });
        $('r-tiles').replaceChildren(...tiles);
        tw.images.shown = { epoch: s.epoch, step: s.step };
      };
      slider.addEventListener('input', show);
      show();
    }).catch(fail);
    // Per-second figures as charts over time; a figure never measured is
    // named as absent, a sample without it is a gap in its line.
    const FIGURES = [
      ['fps', 'FPS'], ['batch_ms', 'time per batch, ms'], ['cpu_percent', 'trainer CPU %'],
      ['ram_mb', 'trainer RAM, MB'], ['gpu_percent', 'GPU %'], ['gpu_mem_mb', 'GPU memory, MB'],
      ['gpu_clock_mhz', 'GPU clock, MHz'],
    ];
    getJson(`${base}/perf`).then((body) => {
      const samples = body.perf;
      const t0 = samples.length ? samples[0].wall_ms : 0;
      const xs = samples.map((p) => (p.wall_ms - t0) / 1000);
      const absent = [];
      tw.perf = {};
      for (const [f, label] of FIGURES) {
        const ys = samples.map((p) => (p[f] === null || p[f] === undefined ? null : p[f]));
        if (!ys.some((v) => v !== null)) {
          absent.push(label);
          continue;
        }
        const box = el('section', 'card chart-box');
        box.dataset.key = f;
        box.append(el('h2', null, label));
        $('r-perf').append(box);
        tw.perf[f] = ys.filter((v) => v !== null).length;
        new uPlot({
          width: chartWidth(box),
          height: 160,
          scales: { x: { time: false } },
          axes: [{ label: 's since the first sample' }, {}],
          series: [{ label: 's' }, { label, stroke: '#009e73', width: 1.5 }],
        }, [xs, ys], box);
      }
      $('r-absent').textContent = samples.length
        ? (absent.length ? 'Not measured on this device: ' + absent.join(', ') + '.' : '')
        : 'No performance figures stored for this run.';
    }).catch(fail);
    getJson(`${base}/statuses`).then((body) => {
      const ol = $('r-history');
      for (const s of body.statuses) {
        ol.append(el('li', null, `${stamp(s.wall_ms)} ${s.status}${s.message ? ': ' + s.message : ''}`));
      }
    }).catch(fail);
    getJson(`${base}/commands`).then((body) => {
      const ul = $('r-commands');
      const at = (ms) => (ms ? clock(ms) : 'not yet');
      for (const c of body.commands) {
        let what = c.what;
        try {
          const w = JSON.parse(c.what);
          const p = Object.entries(w.parameters || {}).map(([k, v]) => `${k}=${v}`).join(', ');
          what = w.type + (p ? ` (${p})` : '');
        } catch (_) { /* shown as stored */ }
        ul.append(el('li', c.applied_ms ? 'applied' : c.delivered_ms ? 'delivered' : null,
          `#${c.id} ${what} by ${c.who} at ${clock(c.when_ms)}; delivered ${at(c.delivered_ms)}; applied ${at(c.applied_ms)}`));
      }
      if (!body.commands.length) ul.append(el('li', null, 'No command was sent to this run.'));
    }).catch(fail);
    // One section per prefix, in name order; a chart per key in it.
    const root = $('r-charts');
    const grids = new Map();
    const gridOf = (key) => {
      const g = key.includes('/') ? key.slice(0, key.indexOf('/')) : '(no prefix)';
      if (!grids.has(g)) {
        const sec = el('section', 'group');
        sec.dataset.group = g;
        sec.append(el('h2', null, g));
        const grid = el('div', 'charts');
        sec.append(grid);
        const after = [...root.querySelectorAll('section.group')].find((x) => x.dataset.group.localeCompare(g) > 0);
        root.insertBefore(sec, after || null);
        grids.set(g, grid);
      }
      return grids.get(g);
    };
    const live = new Map(); // key → chart state, for live points
    const scalarsRead = getJson(`${base}/scalars?points=${POINTS}`);
    Promise.all([runRead, scalarsRead]).then(([run, body]) => {
      const firsts = body.series.filter((s) => s.buckets.length).map((s) => s.buckets[0].wall_ms);
      t0 = firsts.length ? Math.min(...firsts) : 0;
      $('r-x').querySelector('option[value=epoch]').disabled = !perEpoch;
      if (xAxis === 'epoch' && !perEpoch) xAxis = 'step';
      $('r-x').value = xAxis;
      const none = el('p', 'muted', 'This run has logged no named scalar.');
      if (!body.series.length) root.append(none);
      for (const s of [...body.series].sort((a, b) => a.key.localeCompare(b.key))) {
        chart(s.key, s, gridOf(s.key));
      }
      // Keys and a step range from the form (and the URL).
      const filter = keyFilter($('r-keys'), root);
      tw.shownKeys = filter();
      const range = () => [Number($('r-from').value), Number($('r-to').value)];
      const zoomAll = () => {
        const [a, b] = range();
        if ($('r-from').value === '' || $('r-to').value === '' || !(a <= b)) return;
        setParams([['from', String(a)], ['to', String(b)]]);
        return Promise.all(Object.values(tw.charts).map((c) => c.zoom(a, b)));
      };
      $('r-opts').addEventListener('submit', (e) => {
        e.preventDefault();
        zoomAll();
      });
      $('r-all').addEventListener('click', () => {
        $('r-from').value = '';
        $('r-to').value = '';
        setParams([['from', null], ['to', null]]);
        for (const c of Object.values(tw.charts)) c.reset();
      });
      $('r-keys').addEventListener('input', () => { tw.shownKeys = filter(); });
      const p = new URLSearchParams(location.search);
      $('r-from').value = p.get('from') || '';
      $('r-to').value = p.get('to') || '';
      Promise.resolve(zoomAll()).then(() => { tw.chartsReady = true; });
      if (run.status === 'completed' || run.status === 'failed') return;
      // A live run: its points as they are applied, appended to charts
      // that show the whole run (a zoomed one keeps its range).
      const dirty = new Set();
      let scheduled = false;
      tw.live = { points: 0, batches: 0 };
      const paint = () => {
        scheduled = false;
        for (const c of dirty) c.redraw();
        dirty.clear();
      };
      liveFeed([id], {
        live(ids) {
          tw.live.following = ids.length > 0;
          if (ids.length) setConn('live', 'live');
        },
        batch(b) {
          tw.live.batches++;
          for (const [key, pts] of Object.entries(b.series)) {
            if (!tw.charts[key]) {
              none.remove();
              chart(key, { key, downsampled: false, buckets: [] }, gridOf(key));
              tw.shownKeys = filter();
            }
            const c = tw.charts[key];
            tw.live.points += c.append(pts);
            dirty.add(c);
          }
          if (!scheduled) { scheduled = true; requestAnimationFrame(paint); }
        },
        lagged() {
          for (const c of Object.values(tw.charts)) c.reload();
        },
      });
    }).catch(fail);
  }

  // ---------------------------------------------------------- compare --
  // Up to 20 stored runs side by side: each named scalar one chart with a
  // line per run (aligned by step, one colour-blind-safe colour per run,
  // the legend naming it), and their configs with differing values marked.
  const PALETTE = ['#0072b2', '#e69f00', '#009e73', '#d55e00', '#cc79a7', '#56b4e9', '#000000', '#f0e442'];
  function compareView() {
    $('compare').hidden = false;
    document.title = 'trainwatch — compare';
    const ids = (new URLSearchParams(location.search).get('runs') || '').split(',').filter(Boolean).slice(0, 20);
    tw.compare = { charts: {} };
    const fail = (e) => {
      $('cmp-error').hidden = false;
      $('cmp-error').textContent = String(e.message || e);
    };
    if (ids.length < 2) return fail(new Error('Pick at least two runs on the runs page (?runs=a,b).'));
    Promise.all(ids.map((id) => Promise.all([
      getJson('/api/runs/' + encodeURIComponent(id)),
      getJson('/api/runs/' + encodeURIComponent(id) + '/scalars?points=1000'),
    ]))).then((all) => {
      setConn('live', 'stored runs');
      const runs = all.map(([run]) => run);
      const label = (run) => run.name || run.id;
      $('cmp-meta').textContent = runs.map(label).join(' · ');
      // Configs: one row per field, a column per run.
      const configs = runs.map((run) => {
        let c = {};
        try { c = JSON.parse(run.config); } catch (_) { /* none */ }
        return Object.assign({ device: run.device, model: run.model, dataset: run.dataset, status: run.status }, c);
      });
      const fields = [...new Set(configs.flatMap((c) => Object.keys(c)))];
      const table = $('cmp-config');
      const head = el('tr');
      head.append(el('th', null, 'field'));
      runs.forEach((run, i) => {
        const th = el('th', null, label(run));
        th.style.color = PALETTE[i % PALETTE.length];
        head.append(th);
      });
      table.append(head);
      const differs = [];
      for (const f of fields) {
        const vals = configs.map((c) => (c[f] === undefined ? '' : JSON.stringify(c[f])));
        const tr = el('tr', new Set(vals).size > 1 ? 'differs' : null);
        if (tr.className) differs.push(f);
        tr.append(el('td', null, f));
        for (const v of vals) tr.append(el('td', null, v.replace(/^"|"$/g, '')));
        table.append(tr);
      }
      tw.compare.differs = differs;
      // Charts: every key any run logged, aligned by step or by the
      // seconds since each run's own first point (runs started apart).
      // data[r]: key → {step, wall, val} of run r, the store's buckets
      // (their last values), then the live points of a live run.
      const data = all.map(([, s]) => new Map(s.series.map((x) => [x.key, {
        step: x.buckets.map((p) => p.step),
        wall: x.buckets.map((p) => p.wall_ms),
        val: x.buckets.map((p) => p.last),
      }])));
      const keySet = () => [...new Set(data.flatMap((m) => [...m.keys()]))].sort();
      let keys = keySet();
      const starts = data.map((m) => {
        const f = [...m.values()].filter((x) => x.wall.length).map((x) => x.wall[0]);
        return f.length ? Math.min(...f) : null;
      });
      let axis = new URLSearchParams(location.search).get('x') === 'relative' ? 'relative' : 'step';
      $('cmp-x').value = axis;
      $('cmp-x').addEventListener('change', () => {
        axis = $('cmp-x').value;
        setParams([['x', axis === 'relative' && axis]]);
        draw();
      });
      const plots = new Map();
      const tablesOf = (key) => data.map((m, r) => {
        const d = m.get(key);
        if (!d) return [[], []];
        const xs = axis === 'step' ? d.step : d.wall.map((w) => (w - starts[r]) / 1000);
        return [xs, d.val];
      });
      let draw = () => {
        $('cmp-charts').replaceChildren();
        for (const p of plots.values()) p.destroy();
        plots.clear();
        tw.compare.axis = axis;
        tw.compare.firstX = {};
        for (const key of keys) chartOf(key);
      };
      const chartOf = (key) => {
        const tables = tablesOf(key);
        const box = el('section', 'card chart-box');
        box.dataset.key = key;
        box.append(el('h2', null, key));
        $('cmp-charts').append(box);
        const xLabel = axis === 'step' ? 'step' : "s since the run's first point";
        tw.compare.firstX[key] = tables.map((t) => (t[0].length ? t[0][0] : null));
        plots.set(key, new uPlot({
          width: chartWidth(box),
          height: 240,
          scales: { x: { time: false } },
          axes: [{ label: xLabel }, {}],
          series: [{ label: xLabel }].concat(runs.map((run, i) => ({
            label: label(run),
            stroke: PALETTE[i % PALETTE.length],
            dash: i >= PALETTE.length ? [6, 3] : undefined,
            width: 1.5,
            spanGaps: true,
          }))),
        }, uPlot.join(tables), box));
        tw.compare.charts[key] = tables.map((t) => t[0].length);
      };
      const filter = keyFilter($('cmp-keys'), $('cmp-charts'));
      const drawn = draw;
      draw = () => {
        drawn();
        tw.compare.shownKeys = filter();
      };
      $('cmp-keys').addEventListener('input', () => { tw.compare.shownKeys = filter(); });
      draw();
      tw.compare.ready = true;
      // Live runs: their points as the server applies them, drawn at most
      // once per animation frame; the freshness of each drawn batch
      // (trainer's wall clock → painted) goes to tw.compare.latencies.
      const index = new Map(ids.map((id, r) => [id, r]));
      const dirty = new Set();
      let newKey = false, waiting = [], scheduled = false;
      tw.compare.latencies = [];
      tw.compare.live = [];
      const paint = () => {
        scheduled = false;
        if (newKey) {
          keys = keySet();
          newKey = false;
          draw();
        } else {
          for (const key of dirty) {
            const t = tablesOf(key);
            plots.get(key).setData(uPlot.join(t));
            tw.compare.charts[key] = t.map((x) => x[0].length);
          }
        }
        dirty.clear();
        const walls = waiting;
        waiting = [];
        requestAnimationFrame(() => setTimeout(() => {
          const now = nowMs();
          const l = tw.compare.latencies;
          for (const w of walls) l.push(now - w);
          if (l.length > 20 * LATENCY_KEEP) l.splice(0, l.length - 20 * LATENCY_KEEP);
        }, 0));
      };
      // A run whose live points outgrow what a chart needs (or that this
      // page fell behind on) is read from the store again, downsampled.
      const reload = (r) => getJson('/api/runs/' + encodeURIComponent(ids[r]) + '/scalars?points=1000').then((s) => {
        for (const x of s.series) {
          data[r].set(x.key, {
            step: x.buckets.map((p) => p.step),
            wall: x.buckets.map((p) => p.wall_ms),
            val: x.buckets.map((p) => p.last),
          });
          dirty.add(x.key);
        }
        if (!scheduled) { scheduled = true; requestAnimationFrame(paint); }
      }).catch(fail);
      const grown = new Set();
      const finished = (run) => run.status === 'completed' || run.status === 'failed';
      if (runs.every(finished)) return;
      let told = false;
      liveFeed(ids, {
        live(liveIds) {
          // After the first: a reconnect (points may have been missed) or
          // a run that went live since: read those from the store again.
          if (told) for (const id of liveIds) reload(index.get(id));
          told = true;
          tw.compare.live = liveIds;
          setConn('live', `live: ${liveIds.length} of ${ids.length} runs`);
        },
        batch(b) {
          const r = index.get(b.run);
          if (r === undefined) return;
          let newest = 0;
          for (const [key, pts] of Object.entries(b.series)) {
            let d = data[r].get(key);
            if (!d) {
              d = { step: [], wall: [], val: [] };
              data[r].set(key, d);
              if (!keys.includes(key)) newKey = true;
            }
            const last = d.step.length ? d.step[d.step.length - 1] : -Infinity;
            for (const [step, wall, v] of pts) {
              if (step <= last) continue; // the store's read has it
              d.step.push(step);
              d.wall.push(wall);
              d.val.push(v);
              newest = Math.max(newest, wall);
            }
            if (starts[r] === null && d.wall.length) starts[r] = d.wall[0];
            dirty.add(key);
            if (d.step.length > 4000 && !grown.has(r)) {
              grown.add(r);
              reload(r).then(() => grown.delete(r));
            }
          }
          if (newest) waiting.push(newest);
          if (!scheduled) { scheduled = true; requestAnimationFrame(paint); }
        },
        lagged: (id) => index.has(id) && reload(index.get(id)),
      });
    }).catch(fail);
  }

  // The scalar points of live runs among `ids` as the server applies them
  // (GET /api/live): on.live(ids live now; again after a reconnect or when
  // one more goes live), on.batch({run, series}) for each applied batch,
  // on.lagged(id) when this page fell behind on that run.
  function liveFeed(ids, on) {
    const es = new EventSource('/api/live?runs=' + ids.map(encodeURIComponent).join(','));
    es.addEventListener('live', (ev) => on.live(JSON.parse(ev.data).runs));
    es.addEventListener('points', (ev) => {
      const d = JSON.parse(ev.data);
      for (const b of d.batches) on.batch(b);
      for (const run of d.lagged) on.lagged(run);
    });
    es.onerror = () => setConn('down', 'reconnecting…');
    return es;
  }

  // ---------------------------------------------------------- session --
  // One run's page: the state S that the run's event stream fills, and one
  // panel per part of the page (header, performance, status history, images,
  // loss chart, accuracy chart, controls), each with its own render. A panel
  // is drawn at most once per animation frame, and only when its data changed.
  function sessionView(id) {
    $('session').hidden = false;
    document.title = 'trainwatch — ' + id;
    $('s-id').textContent = id;
    capabilities.then((c) => {
      if (!c.store) return;
      $('s-stored').href = '/runs/' + encodeURIComponent(id);
      $('s-stored').hidden = false;
    });
    const base = '/api/sessions/' + encodeURIComponent(id);
    const S = {
      config: null, loss: [], stride: 1, epochs: [], history: [], perf: null,
      status: 'UNKNOWN', frame: null, skew: 0,
    };
    const dirty = { head: true, charts: true, perf: true, history: true };
    let scheduled = false;

    const className = (c) => {
      const names = S.config && S.config.class_names;
      return names && c >= 0 && c < names.length ? names[c] : `class ${c}`;
    };

    function schedule() {
      if (!scheduled) {
        scheduled = true;
        requestAnimationFrame(render);
      }
    }

    const head = headPanel(S);
    const perf = perfPanel(S);
    const history = historyPanel(S);
    const images = imagesPanel(S, className, { shown: () => perf.render(), schedule });
    const loss = lossPanel(S);
    const accuracy = accuracyPanel(S);
    tw.debug = () => {
      const d = images.debug();
      return { decoding: d.decoding, scheduled, pending: d.pending, loss: S.loss.length };
    };

    const es = new EventSource(base + '/events');
    es.onopen = () => setConn('live', 'live');
    es.onerror = () => {
      setConn('down', 'reconnecting…');
      if (es.readyState === EventSource.CLOSED) checkGone();
    };
    es.addEventListener('update', (ev) => update(JSON.parse(ev.data)));

    // Folds one update into S and marks what it changed.
    function update(d) {
      S.skew = d.server_ms - Date.now();
      if (d.status !== S.status || d.status_message !== S.statusMessage) dirty.head = true;
      S.status = d.status;
      S.statusMessage = d.status_message;
      S.client = d.client;
      S.counters = d.counters;
      if (d.config !== undefined) {
        S.config = d.config;
        dirty.head = dirty.charts = true;
      }
      if (d.loss) {
        const pts = d.loss.points;
        if (d.loss.reset) S.loss = pts;
        else for (const p of pts) S.loss.push(p);
        S.stride = d.loss.stride;
        dirty.charts = true;
      }
      if (d.epochs) {
        S.epochs = d.epochs;
        dirty.charts = true;
      }
      if (d.status_history) {
        const fresh = newRecords(S.history, d.status_history);
        S.history = d.status_history;
        dirty.history = true;
        if (fresh.length) controls.applied(fresh);
      }
      if (d.performance !== undefined) {
        S.perf = d.performance;
        dirty.perf = true;
      }
      if (d.commands) controls.track(d.commands);
      if (d.frame) images.offer(d.frame);
      dirty.perf = true;
      schedule();
    }

    async function checkGone() {
      try {
        const r = await fetch(base, { cache: 'no-store' });
        if (r.status === 404) {
          $('s-gone').textContent = 'This session is no longer on the server (evicted, or the server restarted).';
          $('s-gone').hidden = false;
        }
      } catch (_) { /* the server is down: the indicator says so */ }
    }

    function render() {
      scheduled = false;
      if (dirty.head) head.render();
      if (dirty.perf) perf.render();
      if (dirty.history) history.render();
      if (dirty.charts) {
        loss.render();
        accuracy.render();
      }
      dirty.head = dirty.perf = dirty.history = dirty.charts = false;
      images.render();
    }

    window.addEventListener('resize', () => { dirty.charts = true; schedule(); });

    const controls = controlsPanel(base);
  }

  // The header: status badge, model, agent and the status message.
  function headPanel(S) {
    function render() {
      const b = $('s-status');
      b.className = 'badge ' + S.status;
      b.textContent = S.status;
      const c = S.config;
      const meta = [];
      if (c) meta.push(`${c.model_name || 'model'} on ${c.dataset_name || 'dataset'}`, `batch size ${c.batch_size}`);
      if (S.client) meta.push(`agent: ${S.client}`);
      if (S.statusMessage) meta.push(`“${S.statusMessage}”`);
      $('s-meta').textContent = meta.join(' · ');
    }
    return { render };
  }

  // Progress, performance and resources, and the page's own paint latency.
  function perfPanel(S) {
    function render() {
      const p = S.perf || {};
      const c = S.config;
      const f = S.frame;
      $('p-epoch').textContent = f ? (c && c.total_epochs ? `${f.epoch + 1} / ${c.total_epochs}` : `${f.epoch + 1}`) : 'n/a';
      $('p-batch').textContent = f ? (c && c.batches_per_epoch ? `${f.batch_idx + 1} / ${c.batches_per_epoch}` : `${f.batch_idx + 1}`) : 'n/a';
      $('p-fps').textContent = na(p.current_fps, num(1));
      $('p-fps-avg').textContent = na(p.average_fps, num(1));
      $('p-tpb').textContent = na(p.time_per_batch_ms, (v) => v.toFixed(1) + ' ms');
      $('p-eta').textContent = na(p.estimated_time_remaining_sec, dur);
      $('p-cpu').textContent = na(p.cpu_percent, pct);
      $('p-ram').textContent = na(p.memory_mb, mb);
      $('p-gpu').textContent = na(p.gpu_percent, pct);
      $('p-gpumem').textContent = na(p.gpu_memory_mb, mb);
      $('p-dcpu').textContent = na(p.device_cpu_percent, pct);
      $('p-dram').textContent = na(p.device_memory_used_mb, mb);
      $('p-gpufreq').textContent = na(p.gpu_frequency_mhz, (v) => v.toFixed(0) + ' MHz');
      $('p-batches').textContent = S.counters ? String(S.counters.batches_received) : '0';
      const l = tw.latencies;
      $('p-lat').textContent = l.length
        ? `p50 ${percentile(l, 50).toFixed(0)} ms · p99 ${percentile(l, 99).toFixed(0)} ms`
        : 'n/a';
    }
    return { render };
  }

  // Status changes, newest first.
  function historyPanel(S) {
    function render() {
      const ol = $('history');
      ol.replaceChildren();
      for (let i = S.history.length - 1; i >= 0; i--) {
        const r = S.history[i];
        const li = el('li');
        li.append(el('span', 't', clock(r.t_ms)), el('span', 'badge ' + r.status, r.status));
        if (r.message) li.append(' ' + r.message);
        ol.append(li);
      }
    }
    return { render };
  }

  // The newest frame's images with their predictions. `offer` keeps the
  // newest frame not yet shown; `render` shows it unless one is decoding;
  // `shown` runs once a frame's labels are in, `schedule` when a newer frame
  // waits for the next animation frame.
  function imagesPanel(S, className, { shown, schedule }) {
    let pendingFrame = null; // newest frame not yet shown
    let decoding = false;

    // Tiles are built once; each update swaps decoded images and labels.
    const tiles = [];
    for (let i = 0; i < TILES; i++) {
      const t = el('figure', 'tile');
      const img = el('img');
      img.alt = '';
      const lbl = el('figcaption', 'lbl');
      const pred = el('div', 'pred');
      const mark = el('span', 'mark');
      const predName = el('span', 'pname');
      const conf = el('span', 'conf muted');
      pred.append(mark, predName, ' ', conf);
      const truth = el('div', 'truth');
      lbl.append(pred, truth);
      t.append(img, lbl);
      t.hidden = true;
      $('tiles').append(t);
      tiles.push({ t, img, mark, predName, conf, truth });
    }

    // Decodes the newest frame's images off-screen, then swaps them in with
    // their labels in one go and records when that was painted.
    async function showFrame() {
      const f = pendingFrame;
      pendingFrame = null;
      decoding = true;
      const n = Math.min(TILES, f.images.length);
      const imgs = [];
      for (let i = 0; i < n; i++) {
        const im = new Image();
        im.alt = `sample ${i}`;
        im.src = 'data:image/jpeg;base64,' + f.images[i];
        imgs.push(im);
      }
      await Promise.all(imgs.map((im) => im.decode().catch(() => {})));
      for (let i = 0; i < TILES; i++) {
        const t = tiles[i];
        if (i >= n) {
          t.t.hidden = true;
          continue;
        }
        const [pc, conf] = f.predictions[i] || [-1, 0];
        const truth = f.ground_truth[i];
        const right = pc === truth;
        t.img.replaceWith(imgs[i]);
        t.img = imgs[i];
        t.t.hidden = false;
        t.t.className = 'tile ' + (right ? 'right' : 'wrong');
        t.mark.textContent = right ? '✓' : '✗';
        t.mark.title = right ? 'right' : 'wrong';
        t.predName.textContent = className(pc);
        t.conf.textContent = (conf * 100).toFixed(0) + '%';
        t.truth.textContent = 'true: ' + className(truth);
        t.t.dataset.pred = pc;
        t.t.dataset.truth = truth;
      }
      $('f-id').textContent = `epoch ${f.epoch + 1}, batch ${f.batch_idx + 1}, loss ${f.loss.toFixed(4)}`;
      delete f.images; // keep the labels, free the base64
      S.frame = f;
      tw.frame = f;
      shown();
      // The rAF callback runs just before the next paint; the task after it
      // runs once that paint is done.
      requestAnimationFrame(() => setTimeout(() => {
        const lat = nowMs() - f.received_ms;
        tw.latencies.push(lat);
        if (tw.latencies.length > LATENCY_KEEP) tw.latencies.shift();
        tw.paints++;
        decoding = false;
        if (pendingFrame) schedule();
      }, 0));
    }

    return {
      offer(f) { pendingFrame = f; },
      render() { if (pendingFrame && !decoding) showFrame(); },
      debug: () => ({ decoding, pending: pendingFrame && pendingFrame.seq }),
    };
  }

  // ----------------------------------------------------------- charts --
  // A uPlot chart in `box` once there is data (`message` until then);
  // later calls only hand it new data. Returns the plot or null.
  function livePlot(box, message, opts, data) {
    if (!data[0].length) {
      if (box.plot) { box.plot.destroy(); box.plot = null; }
      if (!box.querySelector('.empty')) box.replaceChildren(el('p', 'empty', message));
      return null;
    }
    if (!box.plot) {
      box.replaceChildren();
      box.plot = new uPlot(Object.assign({ width: Math.max(280, box.clientWidth || 600), height: 240 }, opts), data, box);
    } else box.plot.setData(data);
    return box.plot;
  }
  const short = (v) => (v === null ? '' : String(+v.toPrecision(3)));

  // Every batch's loss over the run, with each epoch's average on top.
  function lossPanel(S) {
    let bpeShown;
    function render() {
      const box = $('loss-chart');
      const bpe = (S.config && S.config.batches_per_epoch) || 0;
      // x: batches since the start of the run when the epoch length is
      // known, else the point's position.
      const gx = bpe ? (p) => p[0] * bpe + p[1] : (_p, i) => i * S.stride;
      const pts = S.loss;
      box.dataset.points = String(pts.length);
      box.dataset.epochPoints = String(bpe ? S.epochs.length : 0);
      const line = [pts.map(gx), pts.map((p) => p[2])];
      // Each epoch's average at the middle of its batches.
      const avg = bpe ? [S.epochs.map((e) => e.epoch * bpe + bpe / 2), S.epochs.map((e) => e.average_loss)] : [[], []];
      if (bpeShown !== bpe && box.plot) { box.plot.destroy(); box.plot = null; }
      bpeShown = bpe;
      const xLabel = bpe ? 'batches (ticks: epochs)' : 'points';
      livePlot(box, 'no batches yet', {
        scales: { x: { time: false } },
        axes: [
          bpe ? {
            label: xLabel,
            splits: (u, i, lo, hi) => {
              const every = Math.max(1, Math.ceil((hi - lo) / bpe / 8));
              const out = [];
              for (let e = Math.ceil(lo / bpe); e * bpe <= hi; e += every) out.push(e * bpe);
              return out;
            },
            values: (u, vals) => vals.map((v) => `epoch ${v / bpe + 1}`),
          } : { label: xLabel },
          { values: (u, vals) => vals.map(short) },
        ],
        series: [
          { label: xLabel },
          { label: 'batch loss', stroke: '#0072b2', width: 1.5 },
          { label: 'epoch average', stroke: '#d55e00', width: 1.5, dash: [4, 3], spanGaps: true, points: { show: true, size: 7, fill: '#d55e00' } },
        ],
      }, uPlot.join([line, avg]));
    }
    return { render };
  }

  // Each epoch's average accuracy.
  function accuracyPanel(S) {
    function render() {
      const box = $('acc-chart');
      const es = S.epochs;
      box.dataset.points = String(es.length);
      livePlot(box, 'no epoch summaries yet', {
        scales: { x: { time: false, range: (u, lo, hi) => [lo - 0.2, Math.max(hi, lo + 1) + 0.2] }, y: { range: [0, 1] } },
        axes: [
          { label: 'epoch', incrs: [1, 2, 5, 10, 20, 50, 100], values: (u, vals) => vals.map((v) => (Number.isInteger(v) ? String(v) : '')) },
          { values: (u, vals) => vals.map((v) => (v * 100).toFixed(0) + '%') },
        ],
        series: [
          { label: 'epoch' },
          { label: 'accuracy', stroke: '#009e73', width: 2, points: { show: true, size: 7, fill: '#009e73' }, value: (u, v) => (v === null ? '' : (v * 100).toFixed(1) + ' %') },
        ],
      }, [es.map((e) => e.epoch + 1), es.map((e) => e.average_accuracy)]);
    }
    return { render };
  }

  // ---------------------------------------------------------- control --
  // Which new status records show that a command was applied.
  const EXPECT = {
    PAUSE_TRAINING: (s) => s === 'PAUSED',
    RESUME_TRAINING: (s) => s === 'RUNNING',
    STOP_TRAINING: (s) => s === 'COMPLETED' || s === 'FAILED',
    CHANGE_LEARNING_RATE: () => true,
    ADJUST_BATCH_SIZE: () => true,
  };

  // The records of `next` after the last one of `prev`; none while `prev` is
  // empty (what came before the page had any history applied none of its
  // commands).
  function newRecords(prev, next) {
    if (!prev.length) return [];
    const last = prev[prev.length - 1];
    for (let i = next.length - 1; i >= 0; i--) {
      const r = next[i];
      if (r.t_ms === last.t_ms && r.status === last.status && r.message === last.message) return next.slice(i + 1);
    }
    return next;
  }

  // The command buttons, their log, and the stop banner. `applied` takes
  // new status records and marks the commands they show applied.
  function controlsPanel(base) {
    const pending = []; // commands waiting to be seen applied
    let stopBanner = null;

    fetch('/api/control', { cache: 'no-store' })
      .then((r) => r.json())
      .then((c) => {
        if (c.mode === 'disabled') {
          msg('error', 'Control is disabled on this server: its HTTP listener is not loopback and no http_token is configured.');
        } else if (c.mode === 'token' && !token()) {
          msg('', 'This server needs the control token for Pause, Resume, Stop and changes: enter it under “Control token”.');
          $('token-box').open = true;
        }
      })
      .catch(() => {});

    function msg(kind, text) {
      const m = $('c-msg');
      m.className = 'msg ' + kind;
      m.textContent = text;
    }

    // Status records seen lately, with when they arrived: the trainer may
    // apply a command before the page has the POST's answer.
    const recent = [];
    function applied(records) {
      for (const rec of records) {
        recent.push({ rec, seenAt: performance.now() });
        if (recent.length > 50) recent.shift();
        for (const p of pending) match(p, rec);
      }
    }

    // What the server knows of each command: sent to the agent, delivered
    // into the trainer's segment, applied by the trainer.
    const fates = new Map();
    function track(commands) {
      for (const c of commands) fates.set(c.id, c);
      for (const p of pending) fate(p);
    }
    function fate(p) {
      const c = fates.get(p.id);
      if (!c || p.done) return;
      if (c.applied_ms) {
        p.li.className = 'applied';
        p.li.textContent = `${p.label} #${p.id}: applied by the trainer at ${clock(c.applied_ms)}`;
        // Pause, resume and stop are done when the status they cause
        // comes back (match); a change of learning rate or batch size has
        // none to wait for.
        if (p.type === 'CHANGE_LEARNING_RATE' || p.type === 'ADJUST_BATCH_SIZE') {
          p.done = true;
          tw.commands.push({ id: p.id, type: p.type, applied: 'applied' });
          msg('ok', `${p.label} applied by the trainer.`);
        }
      } else if (c.delivered_ms) {
        p.li.className = 'delivered';
        p.li.textContent = `${p.label} #${p.id}: delivered to the trainer at ${clock(c.delivered_ms)}, waiting for it to apply it…`;
      } else if (c.sent) {
        p.li.textContent = `${p.label} #${p.id}: sent to the agent, not yet delivered to the trainer…`;
      }
    }

    function match(p, rec) {
      if (!p.done && EXPECT[p.type](rec.status)) {
        p.done = true;
        p.li.className = 'applied';
        p.li.textContent = `${p.label} #${p.id}: applied by the trainer at ${clock(rec.t_ms)} (status ${rec.status}${rec.message ? ': ' + rec.message : ''})`;
        tw.commands.push({ id: p.id, type: p.type, applied: rec.status });
        if (p.type === 'STOP_TRAINING') endStopBanner('The trainer has stopped.');
        msg('ok', `${p.label} applied: status ${rec.status}.`);
      }
    }

    async function send(type, parameters, label) {
      const headers = { 'Content-Type': 'application/json' };
      if (token()) headers.Authorization = 'Bearer ' + token();
      let r, body;
      const clickedAt = performance.now();
      try {
        r = await fetch(base + '/commands', {
          method: 'POST', headers, cache: 'no-store', credentials: 'same-origin',
          body: JSON.stringify({ type, parameters }),
        });
        body = await r.json().catch(() => ({}));
      } catch (e) {
        msg('error', `${label}: cannot reach the server (${e.message}).`);
        return null;
      }
      if (r.status !== 202) {
        let text = `${label} refused (${r.status}): ${body.error || r.statusText}.`;
        if (r.status === 401) text += ' Enter the control token under “Control token”.';
        msg('error', text);
        if (r.status === 401) $('token-box').open = true;
        return null;
      }
      const li = el('li', null, `${label} #${body.command_id}: ${body.delivered ? 'sent to the agent' : 'held until the agent reconnects'}, not yet delivered to the trainer…`);
      $('c-log').prepend(li);
      while ($('c-log').children.length > 8) $('c-log').lastChild.remove();
      const p = { id: body.command_id, type: body.type, label, li, done: false };
      pending.push(p);
      msg('', `${label} sent; waiting for the trainer to apply it.`);
      for (const x of recent) if (x.seenAt >= clickedAt) match(p, x.rec);
      fate(p);
      return body;
    }

    $('c-pause').addEventListener('click', () => send('PAUSE_TRAINING', {}, 'Pause'));
    $('c-resume').addEventListener('click', () => send('RESUME_TRAINING', {}, 'Resume'));
    $('c-stop').addEventListener('click', () => { $('stop-confirm').hidden = false; $('c-grace').focus(); });
    $('c-stop-no').addEventListener('click', () => { $('stop-confirm').hidden = true; });
    $('c-stop-yes').addEventListener('click', async () => {
      const g = Number($('c-grace').value);
      if (!Number.isFinite(g) || g < 0 || g > 3600) return msg('error', 'Grace period: 0 to 3600 seconds.');
      $('stop-confirm').hidden = true;
      const r = await send('STOP_TRAINING', { grace_period_s: String(g) }, 'Stop');
      const p = r && pending.find((x) => x.id === r.command_id);
      if (p && !p.done) startStopBanner(g);
    });
    $('c-lr-send').addEventListener('click', () => {
      const v = Number($('c-lr').value);
      if (!$('c-lr').value || !(v > 0 && v <= 10)) return msg('error', 'Learning rate: a number above 0, at most 10.');
      send('CHANGE_LEARNING_RATE', { learning_rate: String(v) }, `Learning rate ${v}`);
    });
    $('c-bs-send').addEventListener('click', () => {
      const v = Number($('c-bs').value);
      if (!Number.isInteger(v) || v < 1) return msg('error', 'Batch size: a whole number, at least 1.');
      send('ADJUST_BATCH_SIZE', { batch_size: String(v) }, `Batch size ${v}`);
    });

    // While the trainer checkpoints after STOP: the grace period, counting down.
    function startStopBanner(grace) {
      endStopBanner();
      const until = Date.now() + grace * 1000;
      const tick = () => {
        const left = Math.max(0, (until - Date.now()) / 1000);
        $('c-msg').className = 'msg stopping';
        $('c-msg').textContent = left > 0
          ? `Stopping: the trainer is checkpointing (grace period ${grace} s, ${Math.ceil(left)} s left).`
          : `Stopping: the ${grace} s grace period is over; waiting for the trainer to report.`;
      };
      tick();
      stopBanner = setInterval(tick, 500);
    }
    function endStopBanner(text) {
      if (stopBanner) clearInterval(stopBanner);
      stopBanner = null;
      if (text) msg('ok', text);
    }

    return { applied, track };
  }

  const m = location.pathname.match(/^\/sessions\/(.+)$/);
  const r = location.pathname.match(/^\/runs\/(.+)$/);
  if (m) sessionView(decodeURIComponent(m[1]));
  else if (r) runView(decodeURIComponent(r[1]));
  else if (location.pathname === '/compare') compareView();
  else overview();
})();
