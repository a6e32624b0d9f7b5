// A real click in headless Chromium, for gitmirrord/tests/page.rs (issue 16: "the fetch
// button triggers a fetch"). Drives the browser over the Chrome DevTools Protocol on
// --remote-debugging-pipe (fd 3: commands to the browser, fd 4: its answers, each
// message JSON ended by a NUL byte): opens URL, waits for the page, finds SELECTOR's box
// and sends a trusted mouse press and release at its centre (Input.dispatchMouseEvent,
// what a user's click produces), then waits until WAIT_SELECTOR's text is non-empty and
// prints {"clicked": true, "text": …} on stdout. Node's standard library only.
//
//   node cdp_click.js CHROMIUM PROFILE_DIR URL SELECTOR WAIT_SELECTOR
'use strict';
const { spawn } = require('child_process');

const [bin, profile, url, selector, waitSelector] = process.argv.slice(2);
if (!waitSelector) {
  console.error('usage: cdp_click.js CHROMIUM PROFILE_DIR URL SELECTOR WAIT_SELECTOR');
  process.exit(2);
}

const chrome = spawn(bin, [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage', `--user-data-dir=${profile}`, '--remote-debugging-pipe',
  'about:blank',
], { stdio: ['ignore', 'ignore', 'inherit', 'pipe', 'pipe'] });
const toBrowser = chrome.stdio[3];
const fromBrowser = chrome.stdio[4];

let nextId = 1;
const waiting = new Map();
let buf = Buffer.alloc(0);
fromBrowser.on('data', (chunk) => {
  buf = Buffer.concat([buf, chunk]);
  let end;
  while ((end = buf.indexOf(0)) >= 0) {
    const msg = JSON.parse(buf.subarray(0, end).toString('utf8'));
    buf = buf.subarray(end + 1);
    if (msg.id && waiting.has(msg.id)) {
      const { resolve, reject } = waiting.get(msg.id);
      waiting.delete(msg.id);
      if (msg.error) reject(new Error(`${JSON.stringify(msg.error)}`));
      else resolve(msg.result);
    }
  }
});

function send(method, params = {}, sessionId) {
  const id = nextId++;
  const msg = { id, method, params };
  if (sessionId) msg.sessionId = sessionId;
  toBrowser.write(JSON.stringify(msg) + '\0');
  return new Promise((resolve, reject) => waiting.set(id, { resolve, reject }));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function evaluate(session, expression) {
  const r = await send('Runtime.evaluate', { expression, returnByValue: true }, session);
  if (r.exceptionDetails) throw new Error(JSON.stringify(r.exceptionDetails));
  return r.result.value;
}

// Poll `expression` until it is truthy, for at most `ms`.
async function until(session, expression, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await evaluate(session, expression);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function main() {
  const { targetId } = await send('Target.createTarget', { url });
  const { sessionId } = await send('Target.attachToTarget', { targetId, flatten: true });
  await send('Runtime.enable', {}, sessionId);
  await until(sessionId, "document.readyState === 'complete'", 30000, 'the page to load');
  const sel = JSON.stringify(selector);
  const box = await until(
    sessionId,
    `(function(){var e=document.querySelector(${sel});if(!e)return null;` +
      `e.scrollIntoView();var r=e.getBoundingClientRect();` +
      `return r.width>0?{x:r.left+r.width/2,y:r.top+r.height/2}:null;})()`,
    10000,
    `${selector} to be shown`,
  );
  for (const type of ['mouseMoved', 'mousePressed', 'mouseReleased']) {
    await send('Input.dispatchMouseEvent', {
      type, x: box.x, y: box.y, button: type === 'mouseMoved' ? 'none' : 'left', clickCount: 1,
    }, sessionId);
  }
  const wsel = JSON.stringify(waitSelector);
  const text = await until(
    sessionId,
    `(function(){var e=document.querySelector(${wsel});return e&&e.textContent.trim();})()`,
    20000,
    `${waitSelector} to show a result`,
  );
  process.stdout.write(JSON.stringify({ clicked: true, text }) + '\n');
}

const timer = setTimeout(() => {
  console.error('cdp_click.js: no result within 60 s');
  chrome.kill('SIGKILL');
  process.exit(1);
}, 60000);

main().then(
  async () => {
    clearTimeout(timer);
    try { await Promise.race([send('Browser.close'), sleep(2000)]); } catch (_) { /* closing */ }
    chrome.kill('SIGKILL');
    process.exit(0);
  },
  (e) => {
    console.error(`cdp_click.js: ${e.message}`);
    chrome.kill('SIGKILL');
    process.exit(1);
  },
);
