// A test-only OpenID provider (the reference Node.js implementation, oidc-provider) for
// binome's OpenID realm integration test. Its development interactions accept any
// login name (the test's user) and any password; accounts are made up from the name.
// One deliberate fault for the test: the ID token issued for the login name "mallory"
// has its payload rewritten after signing (its subject becomes "admin"), as a party
// between the provider and binome would; binome must refuse its signature.
// Usage: node server.js PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI
// It prints "listening <issuer>" once it accepts connections and stops on SIGTERM.
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['given_name', 'family_name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          email: `${sub}@example.test`,
          email_verified: true,
          given_name: 'Test',
          family_name: sub,
          preferred_username: `u-${sub}`,
          groups: ['ops', 'not a group!'],
        };
      },
    };
  },
  cookies: { keys: ['binome-test-only-cookie-key'] },
  features: { devInteractions: { enabled: true } },
});

provider.use(async (ctx, next) => {
  await next();
  const idToken = ctx.path === '/token' && ctx.body && ctx.body.id_token;
  if (!idToken) return;
  const [head, payload, signature] = idToken.split('.');
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
  if (claims.sub !== 'mallory') return;
  claims.sub = 'admin';
  const forged = Buffer.from(JSON.stringify(claims)).toString('base64url');
  ctx.body = { ...ctx.body, id_token: `${head}.${forged}.${signature}` };
});

const server = provider.listen(Number(port), '127.0.0.1', () => {
  process.stdout.write(`listening ${issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
