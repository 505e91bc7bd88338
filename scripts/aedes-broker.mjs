// A second MQTT broker for iotsettle's end-to-end tests: aedes (npm, pinned in package.json) on one TCP port.
//
//   node scripts/aedes-broker.mjs PORT [HOST]
//
// Sessions, subscriptions and queued QoS 1 messages live in aedes' default in-memory persistence: they survive a
// client's reconnect but not a restart of this process (unlike mosquitto's persistence file). Client ids may be up
// to 256 characters here (aedes' default is MQTT 3.1's 23). SIGTERM/SIGINT close the broker and exit 0.
import net from 'node:net'
import { Aedes } from 'aedes'

const port = Number(process.argv[2])
const host = process.argv[3] || '127.0.0.1'
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node scripts/aedes-broker.mjs PORT [HOST]')
  process.exit(2)
}

const broker = await Aedes.createBroker({ maxClientsIdLength: 256, queueLimit: 100000 })
const server = net.createServer(broker.handle)
broker.on('clientError', (client, err) => console.log(`client ${client && client.id}: ${err.message}`))
server.on('error', (err) => {
  console.error(`aedes: ${err.message}`)
  process.exit(1)
})
server.listen(port, host, () => console.log(`aedes ${broker.id} listening on ${host}:${port}`))

function stop () {
  server.close()
  broker.close(() => process.exit(0))
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
