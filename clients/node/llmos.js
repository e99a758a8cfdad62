// A minimal llmos client for Node.js, written from proto/llmos/v1/llmos.proto and
// docs/protocol.md alone: one DEALER socket, one Envelope per frame, CURVE when
// given keys (the broker's public key and this client's key pair, in ZeroMQ's
// certificate format as `llmos keys gen` writes them).
//
//   const { LlmosClient } = require("./llmos")
//   const client = await LlmosClient.connect("tcp://127.0.0.1:5555",
//     { keyFile: "alice.key_secret", serverKeyFile: "keys/broker.key" })
//   const result = await client.generate("Hello!", { maxTokens: 16 }, (chunk) => process.stdout.write(chunk.text))
//   client.close()
"use strict"

const crypto = require("crypto")
const fs = require("fs")
const path = require("path")
const protobuf = require("protobufjs")
const zmq = require("zeromq")

const PROTOCOL_VERSION = 1
const DEFAULT_PROTO = path.join(__dirname, "..", "..", "proto", "llmos", "v1", "llmos.proto")

class LlmosError extends Error {
  constructor(error, codeName) {
    super(`${codeName}: ${error.message}`)
    this.code = error.code
    this.codeName = codeName
    this.requestId = error.requestId
    this.retryAfterMs = error.retryAfterMs
  }
}

// `public-key = "..."` and `secret-key = "..."` from a ZeroMQ certificate file (Z85 text).
function readCertificate(file) {
  const text = fs.readFileSync(file, "utf8")
  const field = (name) => {
    const match = new RegExp(`${name}\\s*=\\s*"([^"]+)"`).exec(text)
    return match ? match[1] : undefined
  }
  return { publicKey: field("public-key"), secretKey: field("secret-key") }
}

class LlmosClient {
  static async connect(address, { protoPath = DEFAULT_PROTO, keyFile, serverKeyFile, timeoutMs = 30000 } = {}) {
    const root = await protobuf.load(protoPath)
    const options = { receiveTimeout: timeoutMs, sendTimeout: timeoutMs, linger: 0 }
    if (keyFile || serverKeyFile) {
      const own = readCertificate(keyFile)
      options.curveServerKey = readCertificate(serverKeyFile).publicKey
      options.curvePublicKey = own.publicKey
      options.curveSecretKey = own.secretKey
    }
    const socket = new zmq.Dealer(options)
    socket.connect(address)
    return new LlmosClient(socket, root)
  }

  constructor(socket, root) {
    this.socket = socket
    this.Envelope = root.lookupType("llmos.v1.Envelope")
    this.ErrorCode = root.lookupEnum("llmos.v1.ErrorCode")
    this.FinishReason = root.lookupEnum("llmos.v1.FinishReason")
  }

  async send(body) {
    const envelope = this.Envelope.create({ version: PROTOCOL_VERSION, ...body })
    await this.socket.send(this.Envelope.encode(envelope).finish())
  }

  async receive() {
    const [frame] = await this.socket.receive()
    const envelope = this.Envelope.decode(frame)
    return { kind: envelope.body, message: envelope[envelope.body] }
  }

  error(message) {
    return new LlmosError(message, this.ErrorCode.valuesById[message.code])
  }

  // Stream one answer: onChunk(chunk) for each TokenChunk, then the GenerateResult.
  // Chunks are checked to carry every token exactly once (docs/protocol.md).
  async generate(prompt, { maxTokens = 16, model = "", tier = "", temperature = 0, seed } = {}, onChunk = () => {}) {
    const requestId = crypto.randomUUID()
    const sampling = { maxTokens, temperature }
    if (seed !== undefined) sampling.seed = seed
    await this.send({ generate: { requestId, prompt, model, tier, sampling } })
    let expectedIndex = 0
    for (;;) {
      const { kind, message } = await this.receive()
      if (message.requestId !== undefined && message.requestId !== requestId) continue // another request's
      if (kind === "accepted") continue
      if (kind === "error") throw this.error(message)
      if (kind === "chunk") {
        if (message.index !== expectedIndex) throw new Error(`chunk at ${message.index}, expected ${expectedIndex}`)
        expectedIndex += message.tokenIds.length
        onChunk(message)
      } else if (kind === "result") {
        return { ...message, finishReasonName: this.FinishReason.valuesById[message.finishReason] }
      }
    }
  }

  async status() {
    await this.send({ statusRequest: {} })
    for (;;) {
      const { kind, message } = await this.receive()
      if (kind === "statusReply") return message
      if (kind === "error") throw this.error(message)
    }
  }

  close() {
    this.socket.close()
  }
}

module.exports = { LlmosClient, LlmosError, readCertificate }

// node llmos.js ADDRESS PROMPT [KEY_FILE SERVER_KEY_FILE]: stream one answer to stdout.
if (require.main === module) {
  const [address, prompt, keyFile, serverKeyFile] = process.argv.slice(2)
  ;(async () => {
    const client = await LlmosClient.connect(address, { keyFile, serverKeyFile })
    try {
      const result = await client.generate(prompt, { maxTokens: 32 }, (chunk) => process.stdout.write(chunk.text))
      process.stdout.write(`\n[${result.finishReasonName}]\n`)
    } finally {
      client.close()
    }
  })().catch((error) => {
    console.error(error.message)
    process.exit(1)
  })
}
