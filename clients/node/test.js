// Checks the client against a running stack; tests/test_node_client.py runs it.
//   node test.js ADDRESS MODEL [KEY_FILE SERVER_KEY_FILE]
// Prints one JSON line with what it saw.
"use strict"

const { LlmosClient } = require("./llmos")

async function main() {
  const [address, model, keyFile, serverKeyFile] = process.argv.slice(2)
  const client = await LlmosClient.connect(address, { keyFile, serverKeyFile, timeoutMs: 30000 })
  try {
    const chunks = []
    const result = await client.generate("Hello from Node", { maxTokens: 8, model }, (chunk) => chunks.push(chunk))
    const status = await client.status()
    let refused = null
    try {
      await client.generate("no such model", { maxTokens: 4, model: "no-such-model" })
    } catch (error) {
      refused = error.codeName
    }
    const streamed = chunks.flatMap((chunk) => chunk.tokenIds)
    console.log(
      JSON.stringify({
        generatedTokens: result.usage.generatedTokens,
        finishReason: result.finishReasonName,
        chunksMatchResult: JSON.stringify(streamed) === JSON.stringify(result.tokenIds),
        numWorkers: status.workers.length,
        refused,
      }),
    )
  } finally {
    client.close()
  }
}

main().catch((error) => {
  console.error(error.stack || String(error))
  process.exit(1)
})
