// One fetch through an https:// proxy (proxyd's TLS listener) with undici's ProxyAgent;
// prints {"status", "body"} as JSON.
// Usage: node tls-proxy-fetch.mjs https://USER:PASSWORD@HOST:PORT TARGET_URL PROXY_CA ORIGIN_CA
// The credentials in the proxy URL become `token: 'Basic ...'` (undici sends the token
// as Proxy-Authorization, preemptively); `proxyTls.ca` trusts the proxy's certificate,
// `requestTls.ca` the origin's, each on its own hop.
import { readFileSync } from 'node:fs'
import { ProxyAgent, fetch } from 'undici'

const [proxyUrl, target, proxyCa, originCa] = process.argv.slice(2)
const url = new URL(proxyUrl)
const token = 'Basic ' +
  Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`)
    .toString('base64')
url.username = ''
url.password = ''
const agent = new ProxyAgent({
  uri: url.href,
  token,
  proxyTls: { ca: readFileSync(proxyCa) },
  requestTls: { ca: readFileSync(originCa) },
  connectTimeout: 10000,
  headersTimeout: 20000,
  bodyTimeout: 20000
})
try {
  const response = await fetch(target, { dispatcher: agent, signal: AbortSignal.timeout(30000) })
  process.stdout.write(JSON.stringify({ status: response.status, body: await response.text() }) + '\n')
} finally {
  await agent.close()
}
