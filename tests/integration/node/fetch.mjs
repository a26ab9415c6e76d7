// One GET through an HTTP proxy with undici's ProxyAgent; prints {"status", "body"} as JSON.
// Usage: node fetch.mjs PROXY_URL TARGET_URL [CA_PEM]
// Plain http:// targets go in absolute form (proxyTunnel: false), https:// ones via CONNECT.
import { readFileSync } from 'node:fs'
import { ProxyAgent, request } from 'undici'

const [proxy, target, caFile] = process.argv.slice(2)
const agent = new ProxyAgent({
  uri: proxy,
  proxyTunnel: target.startsWith('https:'),
  requestTls: caFile ? { ca: readFileSync(caFile) } : undefined,
  connectTimeout: 10000,
  headersTimeout: 20000,
  bodyTimeout: 20000
})
try {
  const { statusCode, body } = await request(target, { dispatcher: agent })
  process.stdout.write(JSON.stringify({ status: statusCode, body: await body.text() }) + '\n')
} finally {
  await agent.close()
}
