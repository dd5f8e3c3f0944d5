// A real OpenID Provider (panva's oidc-provider) on loopback, for vault's
// integration tests only. Never expose it: every account signs in with any
// password and /__test/ lets anyone mint tokens.
//
//   node provider.mjs [PORT]      PORT 0 (the default) = a free port
//
// Prints one JSON line on stdout when listening:
//   {"ready":true,"issuer":"http://127.0.0.1:PORT","port":PORT,"alg":"RS256","kid":"..."}
//
// Environment (TTLs in seconds):
//   SIGN_ALG              RS256 (default) | ES256 | EdDSA
//   OIDC_ID_TOKEN_TTL     300       OIDC_ACCESS_TOKEN_TTL   300
//   OIDC_REFRESH_TOKEN_TTL 3600     OIDC_DEVICE_CODE_TTL    600
//
// The client: `vault-cli`, public (no secret), device_code + refresh_token.
// Scopes: openid offline_access profile email groups; the ID token carries
// sub (= account id), preferred_username, name, email, groups.
// Accounts: alice [LDAP_ML_TEAM], bob [], carol [LDAP_ML_TEAM, LDAP_OPS].
//
// Test endpoints (loopback only, JSON in and out):
//   POST /__test/rotate[?drop_old=1]        new signing key; grants survive
//   POST /__test/accounts/ID/disable|enable disabled => refresh is invalid_grant
//   POST /__test/accounts/ID/groups         {"groups":[...]}
//   POST /__test/login    {"account","scope"?}  the whole device flow over HTTP;
//                                           the token answer + "device_code"
//   POST /__test/approve  {"user_code","account"}  through the HTML pages
//   POST /__test/sign     {"header","claims"} sign with the current key
//                                           (alg "none": unsigned; "HS256":
//                                           HMAC keyed with the public PEM)
//   GET  /__test/public-pem                 the current public key, SPKI PEM
import http from 'node:http';
import crypto from 'node:crypto';
import * as jose from 'jose';
import Provider from 'oidc-provider';

// stdout carries the ready line only; the provider's notices go to stderr.
console.log = console.error;
console.info = console.error;

const CLIENT_ID = 'vault-cli';
const DEFAULT_SCOPE = 'openid offline_access profile email groups';
const SIGN_ALG = process.env.SIGN_ALG ?? 'RS256';
const ttl = (name, dflt) => {
  const v = Number(process.env[name] ?? dflt);
  if (!Number.isInteger(v) || v <= 0) throw new Error(`${name} must be a positive integer`);
  return v;
};
const TTL = {
  IdToken: ttl('OIDC_ID_TOKEN_TTL', 300),
  AccessToken: ttl('OIDC_ACCESS_TOKEN_TTL', 300),
  RefreshToken: ttl('OIDC_REFRESH_TOKEN_TTL', 3600),
  DeviceCode: ttl('OIDC_DEVICE_CODE_TTL', 600),
};
TTL.Grant = TTL.RefreshToken;
TTL.Session = 3600;
TTL.Interaction = 600;

// --- accounts (test-only, no passwords) --------------------------------------
const accounts = new Map(Object.entries({
  alice: { name: 'Alice Example', groups: ['LDAP_ML_TEAM'] },
  bob: { name: 'Bob Example', groups: [] },
  carol: { name: 'Carol Example', groups: ['LDAP_ML_TEAM', 'LDAP_OPS'] },
}));
const disabled = new Set();

// A disabled or unknown account is not found: the provider then refuses
// refresh tokens (invalid_grant) and sign-ins.
async function findAccount(ctx, id) {
  const a = accounts.get(id);
  if (!a || disabled.has(id)) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        preferred_username: id,
        name: a.name,
        email: `${id}@example.test`,
        email_verified: true,
        groups: [...a.groups],
      };
    },
  };
}

// --- signing keys --------------------------------------------------------------
// Generated off the event loop with a deadline: Node 20's RSA generation,
// very rarely, never returns (a stalled start was seen once in ~300); a
// second attempt on another thread does.
const KEYGEN_DEADLINE_MS = 5000;
function generateOnce(type, opts) {
  let timer;
  const late = new Promise((resolve) => { timer = setTimeout(() => resolve(null), KEYGEN_DEADLINE_MS); });
  const made = new Promise((resolve, reject) => crypto.generateKeyPair(type, opts, (e, _pub, priv) => (e ? reject(e) : resolve(priv))));
  return Promise.race([made, late]).finally(() => clearTimeout(timer));
}
async function newSigningKey() {
  const [type, opts] = {
    RS256: ['rsa', { modulusLength: 2048 }],
    ES256: ['ec', { namedCurve: 'P-256' }],
    EdDSA: ['ed25519', {}],
  }[SIGN_ALG] ?? (() => { throw new Error(`unsupported SIGN_ALG ${SIGN_ALG}`); })();
  for (let attempt = 1; attempt <= 3; attempt += 1) {
    console.error(`generating a ${SIGN_ALG} signing key (attempt ${attempt})`);
    const privateKey = await generateOnce(type, opts);
    if (privateKey) {
      return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: SIGN_ALG, use: 'sig' };
    }
  }
  throw new Error(`no ${SIGN_ALG} key within ${KEYGEN_DEADLINE_MS} ms in 3 attempts`);
}
let keys = [await newSigningKey()]; // keys[0] signs; the rest stay in /jwks
console.error('signing key ready');

// --- storage shared by every Provider instance of this process ---------------
// /__test/rotate builds a new Provider (keys are fixed at construction); this
// adapter keeps grants, refresh tokens and sessions across that swap.
const store = new Map(); // "Model:id" -> { payload, exp (ms, 0 = never) }
const byGrant = new Map(); // grantId -> Set of store keys
class SharedAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  static get(k) {
    const e = store.get(k);
    if (!e) return undefined;
    if (e.exp && e.exp < Date.now()) { store.delete(k); return undefined; }
    return e.payload;
  }

  async upsert(id, payload, expiresIn) {
    const k = this.key(id);
    const exp = expiresIn ? Date.now() + expiresIn * 1000 : 0;
    store.set(k, { payload, exp });
    if (payload.grantId) {
      if (!byGrant.has(payload.grantId)) byGrant.set(payload.grantId, new Set());
      byGrant.get(payload.grantId).add(k);
    }
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload: id, exp });
    if (payload.uid && this.model === 'Session') store.set(`sessionUid:${payload.uid}`, { payload: id, exp });
  }

  async find(id) { return SharedAdapter.get(this.key(id)); }

  async findByUserCode(code) {
    const id = SharedAdapter.get(`userCode:${code}`);
    return id && this.find(id);
  }

  async findByUid(uid) {
    const id = SharedAdapter.get(`sessionUid:${uid}`);
    return id && this.find(id);
  }

  async consume(id) {
    const p = SharedAdapter.get(this.key(id));
    if (p) p.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const k of byGrant.get(grantId) ?? []) store.delete(k);
    byGrant.delete(grantId);
  }
}

// --- the provider ----------------------------------------------------------------
const cookieKeys = [crypto.randomBytes(32).toString('hex')]; // per process

function makeProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      response_types: [],
      redirect_uris: [],
      id_token_signed_response_alg: SIGN_ALG,
    }],
    adapter: SharedAdapter,
    jwks: { keys },
    findAccount,
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    conformIdTokenClaims: false, // scope claims (groups) go into the ID token itself
    cookies: { keys: cookieKeys },
    features: {
      deviceFlow: { enabled: true },
      devInteractions: { enabled: true }, // plain HTML login/consent, any password
      revocation: { enabled: true },
    },
    ttl: TTL,
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  provider.on('grant.error', (ctx, err) => console.error('grant.error', err.error, '-', err.error_detail));
  return provider;
}

let issuer;
let provider;
let handler;
function useNewProvider() {
  provider = makeProvider(issuer);
  handler = provider.callback();
}

// --- a tiny HTTP client with a cookie jar, for the flows run against ourselves ----
function request(jar, method, path, form) {
  const url = new URL(path, issuer);
  const body = form && new URLSearchParams(form).toString();
  const headers = { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') };
  if (body !== undefined) {
    headers['content-type'] = 'application/x-www-form-urlencoded';
    headers['content-length'] = Buffer.byteLength(body);
  }
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      for (const c of res.headers['set-cookie'] ?? []) {
        const [nv] = c.split(';');
        const i = nv.indexOf('=');
        const [name, value] = [nv.slice(0, i).trim(), nv.slice(i + 1)];
        if (!value || /expires=Thu, 01 Jan 1970/i.test(c)) jar.delete(name); else jar.set(name, value);
      }
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, location: res.headers.location, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

// Follows redirects (the interaction pages redirect a lot).
async function browse(jar, method, path, form) {
  let page = await request(jar, method, path, form);
  for (let hops = 0; page.status >= 300 && page.status < 400 && page.location; hops += 1) {
    if (hops > 10) throw new Error('too many redirects');
    page = await request(jar, 'GET', page.location);
  }
  return page;
}

const field = (html, name) => html.match(new RegExp(`name="${name}" value="([^"]*)"`))?.[1];
const formAction = (html) => html.match(/<form[^>]*action="([^"]+)"/)?.[1]?.replaceAll('&amp;', '&');
const summary = (page) => {
  const red = page.text.match(/<p class="red">([^<]*)<\/p>/)?.[1];
  const title = page.text.match(/<title>([^<]*)<\/title>/)?.[1];
  return `${page.status} ${red ?? title ?? page.text.slice(0, 200)}`;
};

// Approves `userCode` as `account` the way a person would: the device pages,
// then the dev login and consent forms, with a fresh cookie jar.
async function approve(userCode, account) {
  const jar = new Map();
  let page = await browse(jar, 'GET', '/device');
  const xsrf = field(page.text, 'xsrf');
  if (!xsrf) throw new Error(`no user-code form: ${summary(page)}`);
  page = await browse(jar, 'POST', '/device', { xsrf, user_code: userCode });
  if (!/Device Login Confirmation/.test(page.text)) throw new Error(`user code refused: ${summary(page)}`);
  page = await browse(jar, 'POST', '/device', { xsrf, user_code: userCode, confirm: 'yes' });
  for (let step = 0; step < 4; step += 1) {
    if (/<title>Sign-in Success<\/title>/.test(page.text)) return;
    const action = formAction(page.text);
    const prompt = field(page.text, 'prompt');
    if (!action || !['login', 'consent'].includes(prompt)) break;
    const form = prompt === 'login' ? { prompt, login: account, password: 'any' } : { prompt };
    page = await browse(jar, 'POST', action, form);
  }
  throw new Error(`approval did not succeed: ${summary(page)}`);
}

// The whole device flow for `account`: the token endpoint's answer.
async function login(account, scope) {
  const jar = new Map();
  const da = await request(jar, 'POST', '/device/auth', { client_id: CLIENT_ID, scope });
  const auth = JSON.parse(da.text);
  if (da.status !== 200) return [da.status, auth];
  await approve(auth.user_code, account);
  // Polled once, right after approval: no `interval` wait in tests.
  const tok = await request(jar, 'POST', '/token', {
    grant_type: 'urn:ietf:params:oauth:grant-type:device_code',
    device_code: auth.device_code,
    client_id: CLIENT_ID,
  });
  return [tok.status, { ...JSON.parse(tok.text), device_code: auth.device_code }];
}

// Signs arbitrary claims with the current key (header merged over the default).
async function sign(header = {}, claims = {}) {
  const key = keys[0];
  const h = { alg: key.alg, kid: key.kid, typ: 'JWT', ...header };
  const payload = new TextEncoder().encode(JSON.stringify(claims));
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  if (h.alg === 'none') return `${b64(h)}.${b64(claims)}.`;
  if (h.alg === 'HS256') { // the classic confusion: the public key as an HMAC secret
    const input = `${b64(h)}.${b64(claims)}`;
    return `${input}.${crypto.createHmac('sha256', publicPem()).update(input).digest('base64url')}`;
  }
  return new jose.CompactSign(payload).setProtectedHeader(h).sign(await jose.importJWK(key, h.alg));
}

function publicPem() {
  return crypto.createPublicKey({ key: keys[0], format: 'jwk' }).export({ type: 'spki', format: 'pem' });
}

// --- /__test/ ----------------------------------------------------------------------
const readJson = (req) => new Promise((resolve, reject) => {
  let b = '';
  req.setEncoding('utf8');
  req.on('data', (c) => { b += c; });
  req.on('end', () => { try { resolve(b ? JSON.parse(b) : {}); } catch (e) { reject(e); } });
});

async function testEndpoint(req, url) {
  const post = req.method === 'POST';
  let body;
  try {
    body = post ? await readJson(req) : {};
  } catch (e) {
    return [400, { error: `the body is not JSON: ${e.message}` }];
  }
  let m;
  if (post && url.pathname === '/__test/rotate') {
    const fresh = await newSigningKey();
    keys = url.searchParams.get('drop_old') ? [fresh] : [fresh, ...keys];
    useNewProvider();
    return [200, { kid: fresh.kid, kids: keys.map((k) => k.kid) }];
  }
  if (post && (m = url.pathname.match(/^\/__test\/accounts\/([^/]+)\/(disable|enable|groups)$/))) {
    const [, id, what] = m;
    if (!accounts.has(id)) return [404, { error: `no account ${id}` }];
    if (what === 'disable') disabled.add(id);
    if (what === 'enable') disabled.delete(id);
    if (what === 'groups') {
      if (!Array.isArray(body.groups) || !body.groups.every((g) => typeof g === 'string')) {
        return [400, { error: 'groups must be an array of strings' }];
      }
      accounts.get(id).groups = [...body.groups];
    }
    return [200, { account: id, disabled: disabled.has(id), groups: accounts.get(id).groups }];
  }
  if (post && url.pathname === '/__test/login') {
    const account = body.account ?? 'alice';
    if (!accounts.has(account)) return [404, { error: `no account ${account}` }];
    return login(account, body.scope ?? DEFAULT_SCOPE);
  }
  if (post && url.pathname === '/__test/approve') {
    if (typeof body.user_code !== 'string') return [400, { error: 'user_code missing' }];
    const account = body.account ?? 'alice';
    if (!accounts.has(account)) return [404, { error: `no account ${account}` }];
    try {
      await approve(body.user_code, account);
    } catch (e) {
      return [400, { approved: false, error: e.message }];
    }
    return [200, { approved: true }];
  }
  if (post && url.pathname === '/__test/sign') {
    try {
      return [200, { token: await sign(body.header, body.claims) }];
    } catch (e) {
      return [400, { error: e.message }];
    }
  }
  if (req.method === 'GET' && url.pathname === '/__test/public-pem') {
    return [200, { pem: publicPem(), kid: keys[0].kid, alg: keys[0].alg }];
  }
  return [404, { error: 'not found' }];
}

const loopback = (addr) => addr === '127.0.0.1' || addr === '::1' || addr === '::ffff:127.0.0.1';

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (!url.pathname.startsWith('/__test/')) return handler(req, res);
  const answer = loopback(req.socket.remoteAddress)
    ? testEndpoint(req, url)
    : Promise.resolve([403, { error: 'loopback only' }]);
  return answer
    .catch((e) => { console.error(url.pathname, e); return [500, { error: String(e?.message ?? e) }]; })
    .then(([code, obj]) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(obj));
    });
});

server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  console.error('listening');
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}`;
  useNewProvider();
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, port, alg: SIGN_ALG, kid: keys[0].kid })}\n`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
