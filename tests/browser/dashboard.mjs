// Drives Debian's chromium (never a downloaded browser) against a running
// trainwatch server, for tests/dashboard.rs. One argument: a JSON object
//   {url, session, scenario: "live" | "guard" | "reads" | "e2e", frames, token?, screenshot?, profile?, timeout_ms}
// Writes JSON lines on stdout: {"ready": true} once the session view is open
// (the test then feeds frames), and last {"result": {...}}. Every wait is
// bounded; a failure prints {"error": "..."} and exits 1.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';

const CHROMIUM = process.env.TRAINWATCH_CHROMIUM || '/usr/bin/chromium';
const args = JSON.parse(process.argv[2] || '{}');
const timeout = args.timeout_ms || 60000;
const emit = (o) => process.stdout.write(JSON.stringify(o) + '\n');

// A fresh profile: the test's temp dir (it removes it even if this process
// is killed), else one of our own.
const ownProfile = !args.profile;
const profile = args.profile || mkdtempSync(join(tmpdir(), 'trainwatch-chromium-'));
const cleanup = () => { if (ownProfile) rmSync(profile, { recursive: true, force: true }); };
let browser;
const deadline = setTimeout(() => {
  emit({ error: `browser script ran past ${timeout} ms` });
  cleanup();
  process.exit(1);
}, timeout + 5000);

async function main() {
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1360, height: 1020 },
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-default-apps', '--disable-extensions', '--metrics-recording-only',
    ],
    timeout,
  });
  const page = browser.pages()[0] || (await browser.newPage());
  // Each wait fails well before the script's deadline, naming its step.
  page.setDefaultTimeout(Math.max(5000, timeout - 30000));
  globalThis.page = page;
  const consoleErrors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => consoleErrors.push('pageerror: ' + e.message));
  const text = (sel) => page.locator(sel).innerText();
  const sessionUrl = `${args.url}/sessions/${encodeURIComponent(args.session)}`;
  const result = { console_errors: consoleErrors };

  if (args.scenario === 'live') {
    // Overview: the run is listed, linked to its view.
    await page.goto(args.url + '/');
    await page.waitForFunction(
      (id) => [...document.querySelectorAll('#runs tr')].some((tr) => tr.dataset.id === id),
      args.session,
    );
    const row = page.locator('#runs tr', { has: page.getByRole('link', { name: args.session, exact: true }) });
    result.overview = {
      status: await row.locator('.badge').innerText(),
      cells: await row.locator('td').allInnerTexts(),
    };
    await row.getByRole('link').click();
    await page.waitForURL(sessionUrl);
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'live');
    // No performance figures yet: absent, not zero.
    result.before = {
      cpu: await text('#p-cpu'), gpu: await text('#p-gpu'), fps: await text('#p-fps'), eta: await text('#p-eta'),
    };
    emit({ ready: true });

    // The test feeds `frames` batches; wait until the last one is painted.
    const last = args.frames - 1;
    await page.waitForFunction(
      (last) => window.trainwatch.frame && window.trainwatch.frame.seq >= last + 1 &&
        document.getElementById('loss-chart').dataset.points === String(last + 1),
      last,
    );
    await page.waitForFunction(() => document.getElementById('p-fps').textContent !== 'n/a');
    result.frame = await page.evaluate(() => {
      const f = window.trainwatch.frame;
      return { epoch: f.epoch, batch_idx: f.batch_idx, seq: f.seq };
    });
    result.tiles = await page.$$eval('#tiles .tile:not([hidden])', (ts) => ts.map((t) => ({
      natural_width: t.querySelector('img').naturalWidth,
      complete: t.querySelector('img').complete,
      pred: t.querySelector('.pname').textContent,
      conf: t.querySelector('.conf').textContent,
      truth: t.querySelector('.truth').textContent,
      mark: t.querySelector('.mark').textContent,
      right: t.classList.contains('right'),
    })));
    result.loss_points = Number(await page.getAttribute('#loss-chart', 'data-points'));
    result.epoch_points = Number(await page.getAttribute('#loss-chart', 'data-epoch-points'));
    result.acc_points = Number(await page.getAttribute('#acc-chart', 'data-points'));
    result.perf = {
      fps: await text('#p-fps'), fps_avg: await text('#p-fps-avg'), tpb: await text('#p-tpb'),
      eta: await text('#p-eta'), cpu: await text('#p-cpu'), ram: await text('#p-ram'),
      gpu: await text('#p-gpu'), gpu_mem: await text('#p-gpumem'), epoch: await text('#p-epoch'),
      batch: await text('#p-batch'),
    };
    // Canvas pixels that are not background: the charts really drew.
    result.chart_ink = await page.evaluate(() => ['loss-chart', 'acc-chart'].map((id) => {
      const c = document.querySelector(`#${id} canvas`); // uPlot's
      if (!c) return 0;
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) {
        const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
        if (a > 0 && (Math.abs(r - b) > 40 || Math.abs(g - b) > 40)) n++; // coloured: series, not grid
      }
      return n;
    }));
    const lat = await page.evaluate(() => window.trainwatch.latencies.slice());
    const sorted = [...lat].sort((a, b) => a - b);
    const pct = (p) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
    result.latency = { count: lat.length, p50: pct(50), p99: pct(99), max: sorted[sorted.length - 1] };
    result.history = await page.locator('#history li').allInnerTexts();
    if (args.screenshot) {
      mkdirSync(dirname(args.screenshot), { recursive: true });
      await page.screenshot({ path: args.screenshot, fullPage: true });
    }

    // Pause: the test answers the command with StatusUpdate PAUSED.
    await page.getByRole('button', { name: 'Pause', exact: true }).click();
    // The test reports it delivered first, then applied with its status.
    await page.waitForSelector('#c-log li.delivered');
    result.delivered = await page.locator('#c-log li').first().innerText();
    emit({ delivered: true });
    await page.waitForFunction(() => document.getElementById('s-status').textContent === 'PAUSED');
    await page.waitForSelector('#c-log li.applied');
    result.pause = { status: await text('#s-status'), log: await page.locator('#c-log li').allInnerTexts() };

    // Stop asks first, then shows the grace period while the trainer
    // checkpoints; the test answers with COMPLETED once it saw the command.
    await page.getByRole('button', { name: 'Stop…' }).click();
    await page.waitForSelector('#stop-confirm:not([hidden])');
    await page.fill('#c-grace', '7');
    await page.getByRole('button', { name: 'Stop training' }).click();
    await page.waitForFunction(() => /grace period 7 s/.test(document.getElementById('c-msg').textContent));
    result.stop_banner = await text('#c-msg');
    emit({ stopping: true });
    await page.waitForFunction(() => document.getElementById('s-status').textContent === 'COMPLETED');
    result.stop = { status: await text('#s-status'), msg: await text('#c-msg') };
  } else if (args.scenario === 'e2e') {
    // A real agent and Python trainer feed the server: wait for a full grid
    // and a drawn loss chart, read the tiles, then pause the run.
    await page.goto(sessionUrl);
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'live');
    await page.waitForFunction(() => {
      const ts = [...document.querySelectorAll('#tiles .tile:not([hidden]) img')];
      return ts.length === 16 && ts.every((i) => i.complete && i.naturalWidth > 0) &&
        Number(document.getElementById('loss-chart').dataset.points) >= 20;
    });
    result.tiles = await page.$$eval('#tiles .tile:not([hidden])', (ts) => ts.map((t) => ({
      natural_width: t.querySelector('img').naturalWidth,
      pred: t.querySelector('.pname').textContent,
      truth: t.querySelector('.truth').textContent,
    })));
    result.loss_points = Number(await page.getAttribute('#loss-chart', 'data-points'));
    await page.waitForFunction(() => document.getElementById('p-fps').textContent !== 'n/a');
    result.fps = await text('#p-fps');
    await page.getByRole('button', { name: 'Pause', exact: true }).click();
    await page.waitForFunction(() => document.getElementById('s-status').textContent === 'PAUSED');
    result.pause = { status: await text('#s-status') };
  } else if (args.scenario === 'guard') {
    await page.goto(sessionUrl);
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'live');
    result.notice = await text('#c-msg');
    await page.getByRole('button', { name: 'Pause', exact: true }).click();
    await page.waitForFunction(() => /refused/.test(document.getElementById('c-msg').textContent));
    result.refused = await text('#c-msg');
    if (args.token) {
      // Supply the token through the page, then control works.
      if (!(await page.locator('#token-box').evaluate((d) => d.open))) await page.click('#token-box summary');
      await page.fill('#token', args.token);
      await page.getByRole('button', { name: 'Save' }).click();
      result.token_state = await text('#token-state');
      await page.getByRole('button', { name: 'Pause', exact: true }).click();
      await page.waitForFunction(() => /sent to the agent/.test(document.getElementById('c-log').textContent));
      result.accepted = await page.locator('#c-log li').first().innerText();
      result.stored = await page.evaluate(() => sessionStorage.getItem('trainwatch.token') !== null);
    }
  } else if (args.scenario === 'runs') {
    // The store's runs: a page of 50, older ones on demand, filters that
    // the server applies and the URL keeps, a live run's row following it.
    const rows = () => page.locator('#stored tr').count();
    const waitRows = (n) => page.waitForFunction((n) => document.querySelectorAll('#stored tr').length === n, n);
    await page.goto(args.url + '/');
    await waitRows(50);
    result.first_page = await page.locator('#stored tr td:nth-child(2)').allInnerTexts();
    result.count = await text('#rf-count');
    await page.click('#rf-more');
    await waitRows(100);
    result.two_pages = await rows();
    await page.fill('#rf-q', 'sweep-01');
    await waitRows(10);
    await page.fill('#rf-device', 'jetson-b');
    await waitRows(5);
    result.filtered = await page.locator('#stored tr td:nth-child(2)').allInnerTexts();
    result.devices = await page.locator('#stored tr td:nth-child(3)').allInnerTexts();
    result.search = await page.evaluate(() => location.search);
    // A link with the filters shows the same list.
    await page.goto(args.url + '/' + result.search);
    await waitRows(5);
    result.reloaded = await page.locator('#stored tr td:nth-child(2)').allInnerTexts();
    // Sorted by the server: by name A to Z, then Z to A.
    await page.goto(args.url + '/');
    await waitRows(50);
    await page.click('#stored-head th[data-sort="name"] button');
    await page.waitForFunction(() => document.querySelector('#stored tr td a').textContent === 'sweep-000');
    result.by_name = await page.locator('#stored tr td:nth-child(2)').allInnerTexts();
    result.sort_url = await page.evaluate(() => location.search);
    await page.click('#rf-more');
    await waitRows(100);
    result.by_name_100 = await page.locator('#stored tr td:nth-child(2)').allInnerTexts();
    await page.click('#stored-head th[data-sort="name"] button');
    await page.waitForFunction(() => document.querySelector('#stored tr td a').textContent === 'sweep-199');
    result.aria = await page.getAttribute('#stored-head th[data-sort="name"]', 'aria-sort');
    await page.goto(args.url + '/');
    await waitRows(50);
    // Loss, best of the guessed metric, FPS: columns 10 to 12.
    const figures = (id) => page.evaluate((id) => {
      const tr = document.querySelector(`#stored tr[data-id="${CSS.escape(id)}"]`);
      return [9, 10, 11].map((i) => tr.children[i].textContent);
    }, id);
    await page.waitForFunction(() => document.querySelector('#rf-best').textContent !== 'Best');
    await page.waitForFunction(() => document.querySelector('#stored tr td:nth-child(11)').textContent !== '');
    result.best_header = await text('#rf-best');
    result.metric_url = await page.evaluate(() => location.search);
    result.stored_cells = await figures(args.live_id);
    result.other_best = (await figures(args.other_id))[1];
    emit({ listed: true });
    await page.waitForFunction((id) => {
      const tr = document.querySelector(`#stored tr[data-id="${CSS.escape(id)}"]`);
      return tr && tr.children[5].textContent === 'running' && tr.children[11].textContent === '57.5'
        && tr.children[9].textContent === '0.4321';
    }, args.live_id);
    result.live_cells = await figures(args.live_id);
    result.live_row = await page.locator(`#stored tr[data-id="${args.live_id}"]`).innerText();
    // Picking runs for the compare page.
    const boxes = page.locator('#stored tr input[type=checkbox]');
    await boxes.nth(0).check();
    await boxes.nth(1).check();
    await boxes.nth(2).check();
    result.compare_link = await page.getAttribute('#rf-compare', 'href');
    // At a phone's width the page itself does not scroll sideways (the
    // table does, inside its box).
    await page.setViewportSize({ width: 390, height: 844 });
    result.phone_overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.setViewportSize({ width: 1360, height: 1020 });
    result.compare_text = await text('#rf-compare');
    if (args.screenshot) {
      mkdirSync(dirname(args.screenshot), { recursive: true });
      await page.screenshot({ path: args.screenshot, fullPage: false });
    }
  } else if (args.scenario === 'run') {
    // A stored run's page: one chart per named scalar, grouped by prefix;
    // a drag zooms and the server answers that range at full resolution.
    const requests = [];
    page.on('request', (r) => requests.push(r.url()));
    await page.goto(`${args.url}/runs/${encodeURIComponent(args.session)}`);
    await page.waitForFunction(() => window.trainwatch.chartsReady === true);
    result.name = await text('#r-name');
    result.groups = await page.locator('#r-charts .group > h2').allInnerTexts();
    result.charts = await page.evaluate(() => Object.fromEntries(Object.entries(window.trainwatch.charts)
      .map(([k, v]) => [k, { points: v.points, downsampled: v.downsampled }])));
    const over = page.locator('.chart-box[data-key="train/loss"] .u-over');
    const box = await over.boundingBox();
    const y = box.y + box.height / 2;
    const drag = async (a, b) => {
      await page.mouse.move(box.x + box.width * a, y);
      await page.mouse.down();
      await page.mouse.move(box.x + box.width * b, y, { steps: 5 });
      await page.mouse.up();
    };
    const zoomState = () => page.evaluate(() => {
      const c = window.trainwatch.charts['train/loss'];
      return { points: c.points, downsampled: c.downsampled, range: c.range, requests: c.requests.slice() };
    });
    await drag(0.40, 0.45);
    await page.waitForFunction(() => window.trainwatch.charts['train/loss'].range);
    result.zoomed_once = await zoomState();
    await drag(0.50, 0.52);
    await page.waitForFunction((r) => {
      const c = window.trainwatch.charts['train/loss'];
      return c.range && c.range[0] !== r[0];
    }, result.zoomed_once.range);
    result.zoomed = await zoomState();
    // Smoothing: the line becomes the debiased EMA of the values, and the
    // URL keeps the weight.
    await page.locator('#r-smooth').fill('0.9');
    result.smoothed = await page.evaluate(() => window.trainwatch.charts['val/acc'].line(3));
    result.smooth_url = await page.evaluate(() => location.search);
    // Relative time on x, then a log y scale: every chart redrawn.
    await page.selectOption('#r-x', 'relative');
    await page.check('#r-log');
    result.axes = await page.evaluate(() => Object.fromEntries(Object.entries(window.trainwatch.charts)
      .map(([k, v]) => [k, { axis: v.axis, log: v.log, x0: v.x0 }])));
    result.axes_url = await page.evaluate(() => location.search);
    // Keys: only the charts whose key has a word of the filter.
    await page.fill('#r-keys', 'val/, lr');
    result.keys_shown = await page.evaluate(() => window.trainwatch.shownKeys);
    result.keys_visible = await page.locator('#r-charts .chart-box:visible').count();
    result.keys_url = await page.evaluate(() => location.search);
    await page.fill('#r-keys', '');
    // A step range from the keyboard zooms every chart; Show all undoes it.
    await page.focus('#r-from');
    await page.keyboard.type('100');
    await page.keyboard.press('Tab');
    await page.keyboard.type('199');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => Object.values(window.trainwatch.charts).every((c) => c.range && c.range[0] === 100));
    result.range_zoom = await page.evaluate(() => Object.fromEntries(Object.entries(window.trainwatch.charts)
      .map(([k, v]) => [k, { points: v.points, range: v.range, downsampled: v.downsampled }])));
    result.range_url = await page.evaluate(() => location.search);
    await page.click('#r-all');
    await page.waitForFunction(() => Object.values(window.trainwatch.charts).every((c) => !c.range));
    await page.selectOption('#r-x', 'epoch');
    result.epoch_axis = await page.evaluate(() => window.trainwatch.charts['val/acc'].xEnds());
    result.epoch_url = await page.evaluate(() => location.search);
    await page.selectOption('#r-x', 'relative');
    await page.waitForFunction(() => window.trainwatch.perf && document.querySelectorAll('#r-commands li').length > 0);
    result.perf = await page.evaluate(() => window.trainwatch.perf);
    result.absent = await text('#r-absent');
    result.history = await page.locator('#r-history li').allInnerTexts();
    result.commands = await page.locator('#r-commands li').allInnerTexts();
    // The image scrubber: the first stored sample, its tiles decoded.
    result.images = await page.evaluate(() => window.trainwatch.images.count);
    await page.locator('#r-img').fill('0');
    await page.waitForFunction(() => window.trainwatch.images.shown.epoch === 0
      && [...document.querySelectorAll('#r-tiles img')].every((i) => i.complete && i.naturalWidth > 0));
    result.tiles = await page.evaluate(() => [...document.querySelectorAll('#r-tiles figure')].map((f) => ({
      width: f.querySelector('img').naturalWidth,
      caption: f.querySelector('figcaption').innerText,
      ok: f.classList.contains('right'),
    })));
    result.img_at = await text('#r-img-at');
    await page.setViewportSize({ width: 390, height: 844 });
    result.phone_overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.setViewportSize({ width: 1360, height: 1020 });
    if (args.screenshot) {
      mkdirSync(dirname(args.screenshot), { recursive: true });
      await page.screenshot({ path: args.screenshot, fullPage: true });
    }
    result.requests = requests;
  } else if (args.scenario === 'compare') {
    const requests = [];
    page.on('request', (r) => requests.push(r.url()));
    await page.goto(`${args.url}/compare?runs=${args.runs.map(encodeURIComponent).join(',')}`);
    await page.waitForFunction(() => window.trainwatch.compare && window.trainwatch.compare.ready);
    result.charts = await page.evaluate(() => window.trainwatch.compare.charts);
    result.differs = await page.evaluate(() => window.trainwatch.compare.differs);
    result.legend = await page.locator('.chart-box[data-key="train/loss"] .u-legend .u-series .u-label').allInnerTexts();
    await page.selectOption('#cmp-x', 'relative');
    result.relative = await page.evaluate(() => ({ axis: window.trainwatch.compare.axis, first: window.trainwatch.compare.firstX }));
    result.relative_url = await page.evaluate(() => location.search);
    await page.fill('#cmp-keys', 'val');
    result.keys_shown = await page.evaluate(() => window.trainwatch.compare.shownKeys);
    // Redrawn on another alignment, the filter holds.
    await page.selectOption('#cmp-x', 'step');
    result.keys_after = await page.evaluate(() => window.trainwatch.compare.shownKeys);
    result.keys_url = await page.evaluate(() => location.search);
    await page.fill('#cmp-keys', '');
    await page.selectOption('#cmp-x', 'relative');
    await page.setViewportSize({ width: 390, height: 844 });
    result.phone_overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.setViewportSize({ width: 1360, height: 1020 });
    if (args.screenshot) {
      mkdirSync(dirname(args.screenshot), { recursive: true });
      await page.screenshot({ path: args.screenshot, fullPage: true });
    }
    result.requests = requests;
  } else if (args.scenario === 'compare_live') {
    // A finished and a live run: the live one's points arrive as applied.
    await page.goto(`${args.url}/compare?runs=${args.runs.map(encodeURIComponent).join(',')}`);
    await page.waitForFunction(() => window.trainwatch.compare && window.trainwatch.compare.ready
      && window.trainwatch.compare.live.length > 0);
    const cmp = () => page.evaluate(() => ({ live: window.trainwatch.compare.live, charts: window.trainwatch.compare.charts }));
    emit({ watching: await cmp() });
    await page.waitForFunction(() => {
      const c = window.trainwatch.compare.charts;
      return c['val/acc'] && c['train/loss'][1] === 50;
    });
    result.charts = (await cmp()).charts;
    await page.waitForFunction(() => window.trainwatch.compare.latencies.length > 0);
    result.latencies = await page.evaluate(() => window.trainwatch.compare.latencies.length);
    emit({ compared: { charts: result.charts, latencies: result.latencies } });
    // The live run's own page follows it too: a new key's chart in a new
    // group, more points on the loss chart.
    await page.goto(`${args.url}/runs/${encodeURIComponent(args.live_id)}`);
    await page.waitForFunction(() => window.trainwatch.chartsReady && window.trainwatch.live
      && window.trainwatch.live.following);
    const points = () => page.evaluate(() => Object.fromEntries(Object.entries(window.trainwatch.charts)
      .map(([k, v]) => [k, v.points])));
    result.live_link = await page.getAttribute('#r-live', 'href');
    emit({ run_watching: await points() });
    await page.waitForFunction(() => window.trainwatch.charts['sys/gpu_temp']
      && window.trainwatch.charts['train/loss'].points === 60);
    result.run_points = await points();
    result.run_groups = await page.locator('#r-charts .group > h2').allInnerTexts();
  } else if (args.scenario === 'bench') {
    // benches/dashboard.rs: each page loaded `loads` times; times are
    // performance.now() in the page (ms since navigation start).
    const fcp = () => page.evaluate(() => {
      const e = performance.getEntriesByName('first-contentful-paint')[0];
      return e ? e.startTime : null;
    });
    result.runs_fcp = [];
    result.runs_interactive = [];
    for (let i = 0; i < (args.loads || 5); i++) {
      await page.goto(args.url + '/?bench=' + i);
      await page.waitForFunction(() => document.querySelectorAll('#stored tr').length === 50);
      // Interactive: a filter typed now is answered (one row).
      await page.fill('#rf-q', 'run-00042');
      await page.waitForFunction(() => document.querySelectorAll('#stored tr').length === 1);
      result.runs_interactive.push(await page.evaluate(() => performance.now()));
      result.runs_fcp.push(await fcp());
    }
    result.run_fcp = [];
    result.run_charts = [];
    for (let i = 0; i < (args.loads || 5); i++) {
      await page.goto(`${args.url}/runs/${encodeURIComponent(args.session)}?bench=${i}`);
      await page.waitForFunction((n) => window.trainwatch.chartsReady === true
        && document.querySelectorAll('#r-charts .chart-box canvas').length >= n, args.charts);
      // Drawn: the next animation frame after every chart has its data.
      result.run_charts.push(await page.evaluate(() => new Promise((ok) => requestAnimationFrame(() => ok(performance.now())))));
      result.run_fcp.push(await fcp());
    }
    result.run_points = await page.evaluate(() => Object.fromEntries(Object.entries(window.trainwatch.charts).map(([k, v]) => [k, v.points])));
  } else if (args.scenario === 'freshness') {
    // benches/dashboard.rs: the compare page on the live runs; after a
    // warm-up each drawn batch's trainer wall clock → painted, `fresh_s`.
    await page.goto(`${args.url}/compare?runs=${args.live.map(encodeURIComponent).join(',')}`);
    await page.waitForFunction((n) => window.trainwatch.compare && window.trainwatch.compare.ready
      && window.trainwatch.compare.live.length === n, args.live.length);
    await page.waitForTimeout(2000);
    await page.evaluate(() => { window.trainwatch.compare.latencies.length = 0; });
    await page.waitForTimeout((args.fresh_s || 10) * 1000);
    result.fresh = await page.evaluate(() => window.trainwatch.compare.latencies.slice());
    result.fresh_live = await page.evaluate(() => window.trainwatch.compare.live.length);
  } else if (args.scenario === 'reads') {
    // Reading needs the token: the page asks for it, then shows the run.
    await page.goto(sessionUrl);
    await page.waitForFunction(() => /needs the token/.test(document.getElementById('token-state').textContent));
    result.asked = await text('#token-state');
    result.box_open = await page.locator('#token-box').evaluate((d) => d.open);
    await page.fill('#token', args.token);
    await Promise.all([
      page.waitForNavigation(),
      page.getByRole('button', { name: 'Save' }).click(),
    ]);
    await page.waitForFunction(() => document.getElementById('conn').textContent === 'live');
    result.live = true;
    result.status = await text('#s-status');
  } else {
    throw new Error(`unknown scenario ${args.scenario}`);
  }
  emit({ result });
}

main()
  .then(async () => {
    await browser.close();
    cleanup();
    clearTimeout(deadline);
  })
  .catch(async (e) => {
    let state = null;
    try {
      state = await globalThis.page.evaluate(() => ({
        state: window.trainwatch.debug && window.trainwatch.debug(),
        paints: window.trainwatch.paints, frame: window.trainwatch.frame,
        loss_points: document.getElementById('loss-chart').dataset.points,
        status: document.getElementById('s-status').textContent,
        conn: document.getElementById('conn').textContent,
      }));
    } catch (_) { /* no page */ }
    emit({ error: String((e && e.stack) || e) + '\npage: ' + JSON.stringify(state) });
    try { if (browser) await browser.close(); } catch (_) { /* gone */ }
    cleanup();
    process.exit(1);
  });
