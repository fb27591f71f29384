// The example app (examples/app) in headless Chromium, end to end.
//
// Starts the app binary itself (APP_BIN) on a free port with a temporary
// database and key file, drives it through several browser contexts (one per
// "device"), and exits non-zero if any check fails. Run it through run.sh.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const APP_BIN = process.env.APP_BIN;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOTS_DIR;
// The password change asks again when the sign-in is older than this (the
// app's default). The test does not wait it out: it moves the app's test clock
// (APP_TEST_CLOCK=1) past it, and the re-authenticated form then has the whole
// window, in real time, to be submitted.
const REAUTH_SECS = 300;

if (!APP_BIN || !fs.existsSync(APP_BIN)) {
  console.error(`APP_BIN (${APP_BIN}) is not the built example: run tests/browser/run.sh`);
  process.exit(2);
}

// ----- reporting ---------------------------------------------------------------

const failures = [];
let passed = 0;

function check(condition, what, detail = '') {
  if (condition) {
    passed += 1;
    console.log(`ok      ${what}`);
  } else {
    failures.push(what);
    console.log(`FAILED  ${what}${detail ? ` (${detail})` : ''}`);
  }
  return condition;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ----- the app process ------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ths-app-test-'));
const appLog = path.join(dir, 'app.log');
let app = null;

async function startApp(port) {
  const env = {
    ...process.env,
    APP_ADDR: `127.0.0.1:${port}`,
    APP_DB: path.join(dir, 'sessions.db'),
    APP_KEY_FILE: path.join(dir, 'keys.txt'),
    APP_REAUTH_SECS: String(REAUTH_SECS),
    APP_TEST_CLOCK: '1',
  };
  // The key file, not the environment, so rotations persist across restarts.
  delete env.SESSION_KEYS;
  const child = spawn(APP_BIN, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const log = fs.createWriteStream(appLog, { flags: 'a' });
  child.stderr.pipe(log);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the app did not start within 60 s')), 60_000);
    let out = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
      if (out.includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the app exited with ${code} while starting`));
    });
  });
  app = child;
  // A restarted app's clock starts at the wall clock again: move it to where
  // the last one was, so no session ever sees time go backwards.
  if (clockOffset > 0) await postAdvance(port, clockOffset);
}

let clockOffset = 0;

async function postAdvance(port, secs) {
  const r = await fetch(`http://127.0.0.1:${port}/__test/advance?secs=${secs}`, { method: 'POST' });
  if (!r.ok) throw new Error(`POST /__test/advance answered ${r.status}`);
  return Number(await r.text());
}

/** Moves the app's session clock `secs` seconds forward (no sleeping). */
async function advanceClock(port, secs) {
  clockOffset = await postAdvance(port, secs);
}

async function stopApp() {
  if (!app || app.exitCode !== null) return;
  const child = app;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timeout = sleep(5_000).then(() => 'timeout');
  if ((await Promise.race([exited, timeout])) === 'timeout') {
    child.kill('SIGKILL');
    await exited;
  }
  app = null;
}

/** Runs the app on `keyFile` until it exits by itself: its exit code and stderr. */
function runAppToExit(port, keyFile) {
  const env = {
    ...process.env,
    APP_ADDR: `127.0.0.1:${port}`,
    APP_DB: path.join(dir, 'refused.db'),
    APP_KEY_FILE: keyFile,
  };
  delete env.SESSION_KEYS;
  const child = spawn(APP_BIN, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

// ----- a forged-post page, on another port of the same host -----------------------
//
// 127.0.0.1:<other port> is another origin but the same *site*, so the browser
// sends the SameSite=Lax cookie with its POST: only the CSRF token stops it.

function startAttacker(target) {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/html');
    if (req.url === '/frame') {
      res.end(`<iframe id=victim src="${target}/" width=800 height=400></iframe>`);
      return;
    }
    const token = req.url === '/wrong-token' ? '<input name=csrf value=forged-token>' : '';
    res.end(
      `<form method=post action="${target}/logout">${token}</form>` +
        '<script>document.forms[0].submit()</script>',
    );
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

// ----- browser helpers -----------------------------------------------------------------

const USER_AGENTS = {
  linux:
    'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
  mac: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:133.0) Gecko/20100101 Firefox/133.0',
  iphone:
    'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1',
};

let base = '';

async function newDevice(browser, userAgent) {
  const context = await browser.newContext({
    userAgent,
    viewport: { width: 1100, height: 760 },
    deviceScaleFactor: 2,
  });
  const page = await context.newPage();
  return { context, page };
}

async function sessionCookie(context) {
  return (await context.cookies(base)).find((c) => c.name === 'dev-session');
}

async function login(page, user, password, { remember = false } = {}) {
  await page.goto(`${base}/login`);
  await page.fill('#user', user);
  await page.fill('#password', password);
  if (remember) await page.check('#remember');
  await submit(page, '#sign-in');
}

/** Clicks a form's button and waits for the page it leads to (after redirects). */
async function submit(page, selector) {
  await Promise.all([page.waitForNavigation(), page.click(selector)]);
}

/** The signed-in subject shown on the account page, or null when sent to /login. */
async function signedInAs(page) {
  await page.goto(`${base}/`);
  if (new URL(page.url()).pathname === '/login') return null;
  return page.textContent('#subject');
}

/** What closing the browser does: cookies without an expiry are gone. */
async function closeBrowserSession(context) {
  const cookies = await context.cookies();
  await context.clearCookies();
  const kept = cookies.filter((c) => c.expires > 0);
  if (kept.length) await context.addCookies(kept);
}

/** Pages hold account details and CSRF tokens: never cached, never framed. */
function checkPageHeaders(response, what) {
  const h = response.headers();
  check(h['cache-control'] === 'no-store', `${what} is sent with Cache-Control: no-store`, h['cache-control']);
  check(
    h['x-frame-options'] === 'DENY' && h['content-security-policy'] === "frame-ancestors 'none'",
    `${what} forbids framing (X-Frame-Options: DENY, CSP frame-ancestors 'none')`,
    `${h['x-frame-options']} / ${h['content-security-policy']}`,
  );
}

async function flash(page) {
  const el = await page.$('.flash');
  return el ? (await el.textContent()).trim() : '';
}

// ----- the scenario ---------------------------------------------------------------------

async function run(browser) {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;

  // 0. A key file with a malformed line: the app refuses to start, naming the
  // line and never the text on it.
  const badKeys = path.join(dir, 'bad-keys.txt');
  fs.writeFileSync(badKeys, `# keys\n1:${Buffer.alloc(32, 7).toString('base64')}\nSECRET-NOT-AN-ENTRY\n`);
  const refused = await runAppToExit(port, badKeys);
  check(refused.code === 2, 'a malformed key file stops the app at start-up', `exit ${refused.code}`);
  check(
    refused.stderr.includes('line 3') && !refused.stderr.includes('SECRET') && !refused.stderr.includes('BwcH'),
    'the error names the key file\'s line, never its text',
    refused.stderr.trim(),
  );

  await startApp(port);
  check(
    (fs.statSync(path.join(dir, 'keys.txt')).mode & 0o777) === 0o600,
    'the generated key file is readable only by its owner (0600)',
  );

  // 1. The login page: a CSRF token kept in a session before login.
  const a = await newDevice(browser, USER_AGENTS.linux);
  const response = await a.page.goto(`${base}/login`);
  check(response.status() === 200, 'the login page loads');
  check((await a.page.title()).includes('Sign in'), 'the login page is the sign-in form');
  checkPageHeaders(response, 'the login page');
  const preLogin = await sessionCookie(a.context);
  check(!!preLogin, 'the login page starts a session before login (its CSRF token is server-side)');
  check(
    (await a.page.inputValue('input[name=csrf]')).length === 43,
    'the login form carries a CSRF token',
  );
  if (SHOTS) {
    await a.page.fill('#user', 'alice');
    await a.page.screenshot({ path: path.join(SHOTS, 'login.png'), fullPage: true });
    await a.page.fill('#user', '');
  }

  // 2. Sign in through the form, without "remember me".
  await login(a.page, 'alice', 'wonderland');
  check((await signedInAs(a.page)) === 'alice', 'alice signs in through the form');
  let cookie = await sessionCookie(a.context);
  check(cookie && cookie.value !== preLogin.value, 'signing in gives a new secret (no fixation)');
  check(cookie?.httpOnly === true, 'the session cookie is HttpOnly');
  check(cookie?.sameSite === 'Lax', 'the session cookie is SameSite=Lax', cookie?.sameSite);
  check(cookie?.path === '/', 'the session cookie has Path=/');
  check(cookie?.secure === false, 'the development cookie is not Secure (plain HTTP)');
  check(cookie?.expires === -1, 'without "remember me" the cookie ends with the browser');
  const documentCookie = await a.page.evaluate(() => document.cookie);
  check(!documentCookie.includes('dev-session'), 'the session cookie is absent from document.cookie');
  checkPageHeaders(await a.page.goto(`${base}/`), 'the account page');

  // 3. Forged posts are refused with 403 and change nothing.
  const attacker = await startAttacker(base);
  const attackerBase = `http://127.0.0.1:${attacker.address().port}`;
  for (const [what, url] of [
    ['without a token', `${attackerBase}/no-token`],
    ['with a wrong token', `${attackerBase}/wrong-token`],
  ]) {
    const forged = a.page.waitForResponse(
      (r) => r.url() === `${base}/logout` && r.request().method() === 'POST',
    );
    await a.page.goto(url);
    const forgedResponse = await forged;
    check(forgedResponse.status() === 403, `a forged cross-origin POST ${what} gets 403`);
  }
  const scripted = await a.page.evaluate(async (target) => {
    const r = await fetch(`${target}/devices/revoke-others`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'csrf=not-the-token',
    });
    return r.status;
  }, base);
  check(scripted === 403, 'a POST with a wrong token gets 403');
  check((await signedInAs(a.page)) === 'alice', 'the forged posts did not sign alice out');
  // Another site framing the app gets an error page in the frame, not the app.
  await a.page.goto(`${attackerBase}/frame`, { waitUntil: 'load' });
  const framed = a.page.frames().find((f) => f !== a.page.mainFrame());
  check(
    !!framed && !(await framed.$('#subject').catch(() => null)),
    'the browser refuses to show the app in another site\'s frame',
    framed?.url(),
  );
  attacker.close();

  // 4. Closing the browser ends a browser-session login...
  await closeBrowserSession(a.context);
  check((await signedInAs(a.page)) === null, 'a plain login does not survive closing the browser');

  // ...and a remember-me login survives it.
  await login(a.page, 'alice', 'wonderland', { remember: true });
  cookie = await sessionCookie(a.context);
  const thirtyDays = Date.now() / 1000 + 30 * 24 * 3600;
  check(
    cookie && Math.abs(cookie.expires - thirtyDays) < 300,
    'a remember-me cookie expires with the session (30 days)',
    `expires ${cookie?.expires}`,
  );
  check(cookie?.httpOnly === true && cookie?.sameSite === 'Lax', 'the remember-me cookie is HttpOnly, SameSite=Lax');
  await closeBrowserSession(a.context);
  check((await signedInAs(a.page)) === 'alice', 'a remember-me login survives closing the browser');

  // 5. A restart on the same database keeps the session. (And a key file
  // others can read is reported at start-up.)
  await stopApp();
  fs.chmodSync(path.join(dir, 'keys.txt'), 0o644);
  await startApp(port);
  check(
    fs.readFileSync(appLog, 'utf8').includes('the key file is accessible to group or others'),
    'a key file readable by others is reported at start-up',
  );
  check((await signedInAs(a.page)) === 'alice', 'after an app restart alice is still signed in');
  const idA = (await a.page.textContent('#session-id')).trim();

  // 6. Devices: two more browsers sign in as alice; one revokes the first.
  const c = await newDevice(browser, USER_AGENTS.iphone);
  await login(c.page, 'alice', 'wonderland');
  const b = await newDevice(browser, USER_AGENTS.mac);
  await login(b.page, 'alice', 'wonderland', { remember: true });
  checkPageHeaders(await b.page.goto(`${base}/devices`), 'the devices page');
  // Four: the first browser's plain login still exists on the server (closing
  // a browser ends no session), next to its remember-me one, the iPhone and this.
  const rows = await b.page.$$('tr.device-row');
  check(rows.length === 4, 'the devices page lists all four of alice\'s sessions', `${rows.length}`);
  check((await b.page.$$('tr.device-row.this')).length === 1, 'exactly one device is marked "this device"');
  const devicesText = await b.page.textContent('tbody');
  check(
    devicesText.includes('Chrome on Linux') &&
      devicesText.includes('Firefox on macOS') &&
      devicesText.includes('Safari on iPhone'),
    'each device is named from its user agent',
  );
  check(devicesText.includes('127.0.0.1'), 'each device shows its address');
  if (SHOTS) await b.page.screenshot({ path: path.join(SHOTS, 'devices.png'), fullPage: true });

  await submit(b.page, `tr[data-session="${idA}"] button`);
  check((await flash(b.page)).includes('signed out'), 'revoking a device says so');
  check((await b.page.$$('tr.device-row')).length === 3, 'the revoked device is gone from the list');
  check(!(await b.page.$(`tr[data-session="${idA}"]`)), 'the revoked session is not listed');
  check((await signedInAs(a.page)) === null, 'the revoked browser is signed out on its next request');

  // 7. The password change asks for the password again once the sign-in is old.
  await advanceClock(port, REAUTH_SECS + 1);
  checkPageHeaders(await b.page.goto(`${base}/password`), 'the password page');
  check(!!(await b.page.$('#confirm-password')), 'an old sign-in must confirm the password first');
  const early = await b.page.evaluate(async (target) => {
    const token = document.querySelector('input[name=csrf]').value;
    const r = await fetch(`${target}/password`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `csrf=${token}&new_password=sneaky-change&confirm=sneaky-change`,
    });
    return r.status;
  }, base);
  check(early === 403, 'posting the change without re-authentication gets 403');
  await b.page.fill('#password', 'not-it');
  await submit(b.page, '#confirm-password');
  check((await flash(b.page)).includes('not your password'), 'a wrong password does not re-authenticate');
  await b.page.fill('#password', 'wonderland');
  await submit(b.page, '#confirm-password');
  check(new URL(b.page.url()).pathname === '/password', 'confirming leads back to the password page');
  check(!!(await b.page.$('#change-password')), 'after re-authentication the change form is shown');
  await b.page.fill('#new_password', 'through-the-looking-glass');
  await b.page.fill('#confirm', 'through-the-looking-glass');
  await submit(b.page, '#change-password');
  check(
    (await flash(b.page)).includes('Signed out 2 other devices'),
    'the change signs out every other device',
    await flash(b.page),
  );
  check((await signedInAs(c.page)) === null, 'the other device (the iPhone) is signed out');
  await b.page.goto(`${base}/devices`);
  check((await b.page.$$('tr.device-row')).length === 1, 'only this device is left');
  check((await signedInAs(b.page)) === 'alice', 'the browser that changed it stays signed in');

  // 8. "Sign out everywhere else", then sign out.
  await login(c.page, 'alice', 'through-the-looking-glass');
  check((await signedInAs(c.page)) === 'alice', 'the iPhone signs in with the new password');
  await b.page.goto(`${base}/devices`);
  await submit(b.page, '#revoke-others');
  check((await flash(b.page)).includes('Signed out 1 other device'), '"sign out everywhere else" says how many');
  check((await signedInAs(c.page)) === null, 'the iPhone is signed out again');
  check((await signedInAs(b.page)) === 'alice', 'the browser that asked stays signed in');
  await submit(b.page, '#logout');
  check((await flash(b.page)).includes('signed out'), 'signing out lands on the login page');
  check((await signedInAs(b.page)) === null, 'after signing out the account page needs a login');
  await login(b.page, 'alice', 'wonderland');
  check((await flash(b.page)).includes('Wrong user name or password'), 'the old password no longer works');
  await login(b.page, 'alice', 'through-the-looking-glass', { remember: true });
  check((await signedInAs(b.page)) === 'alice', 'the new password works');
  const forbidden = await b.page.goto(`${base}/admin`);
  check(forbidden.status() === 403, 'the admin page is refused to a non-admin');

  // 9. Key rotation through the admin page signs nobody out.
  const d = await newDevice(browser, USER_AGENTS.linux);
  await login(d.page, 'admin', 'rotate-the-keys', { remember: true });
  checkPageHeaders(await d.page.goto(`${base}/admin`), 'the admin page');
  check(!!(await d.page.$('tr[data-version="1"] .badge.ok')), 'key v1 is current at first');
  await submit(d.page, '#rotate');
  check((await flash(d.page)).includes('v2 added'), 'the admin adds and promotes key v2', await flash(d.page));
  await d.page.reload();
  check(!!(await d.page.$('tr[data-version="2"] .badge.ok')), 'key v2 is current');
  check(fs.readFileSync(path.join(dir, 'keys.txt'), 'utf8').includes('\n2:'), 'the key file holds v2, current');
  check(
    (fs.statSync(path.join(dir, 'keys.txt')).mode & 0o777) === 0o600 && !fs.existsSync(path.join(dir, 'keys.txt.tmp')),
    'the rewritten key file is 0600 again, its temp file renamed away',
  );
  check((await signedInAs(d.page)) === 'admin', 'the admin is still signed in after the rotation');
  check((await d.page.textContent('#key-version')).trim() === 'v2', 'the admin\'s session moved to key v2');
  // Alice's first request after the rotation still matches under v1 and
  // re-keys her session on the way out; from the next one on it is v2.
  check((await signedInAs(b.page)) === 'alice', 'alice is still signed in after the rotation');
  check((await b.page.textContent('#key-version')).trim() === 'v1', 'alice\'s first request matches under v1');
  await b.page.reload();
  check((await b.page.textContent('#key-version')).trim() === 'v2', 'her session was re-keyed to v2');

  await d.page.goto(`${base}/admin`);
  await submit(d.page, '#retire-1');
  check((await flash(d.page)).includes('Key v1 retired'), 'the admin retires key v1', await flash(d.page));
  check(!(await d.page.$('tr[data-version="1"]')), 'v1 is gone from the ring');
  const keyFile = fs.readFileSync(path.join(dir, 'keys.txt'), 'utf8');
  check(!/(^|,)\s*1:/m.test(keyFile), 'the key file no longer holds v1');
  const events = await d.page.textContent('#events');
  check(events.includes('session ended') && events.includes('keys'), 'the admin page shows session and key events');
  if (SHOTS) await d.page.screenshot({ path: path.join(SHOTS, 'admin.png') });
  check((await signedInAs(b.page)) === 'alice', 'alice is still signed in after v1 is retired');

  await stopApp();
  await startApp(port);
  check((await signedInAs(d.page)) === 'admin', 'after a restart the rotated key still signs the admin in');

  // 10. Sign out.
  await d.page.goto(`${base}/`);
  await submit(d.page, '#logout');
  check((await signedInAs(d.page)) === null, 'the admin signs out');
  const adminAgain = await d.page.goto(`${base}/admin`);
  check(new URL(adminAgain.url()).pathname === '/login', 'the admin page now sends to the login page');
}

// ----- main ----------------------------------------------------------------------------

let browser;
let crashed = null;
try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Containers and root rarely allow Chromium's sandbox; the browser only
    // ever visits the local app and the local forged-post page.
    args: ['--no-sandbox'],
  });
  await run(browser);
} catch (error) {
  crashed = error;
} finally {
  await browser?.close().catch(() => {});
  await stopApp().catch(() => {});
}

if (crashed) console.log(`FAILED  the scenario stopped: ${crashed.stack || crashed}`);
if (crashed || failures.length) {
  console.log(`\n--- app log (${appLog}) ---\n${fs.existsSync(appLog) ? fs.readFileSync(appLog, 'utf8').slice(-8000) : ''}`);
  console.log(`\n${passed} passed, ${failures.length} failed${crashed ? ', scenario crashed' : ''}`);
  process.exit(1);
}
fs.rmSync(dir, { recursive: true, force: true });
console.log(`\nall ${passed} checks passed`);
