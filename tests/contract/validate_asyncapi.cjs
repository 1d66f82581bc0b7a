// Validate an AsyncAPI document with the AsyncAPI project's own parser.
// usage: node validate_asyncapi.cjs <folder holding node_modules/@asyncapi/parser> <document>
// Prints every diagnostic; exits 1 when the parser reports an error (severity 0).
const path = require("path");
const fs = require("fs");

async function main() {
  const [parserDir, documentPath] = process.argv.slice(2);
  const { Parser } = require(path.resolve(parserDir, "node_modules", "@asyncapi", "parser"));
  const parser = new Parser();
  const source = fs.readFileSync(documentPath, "utf8");
  const { document, diagnostics } = await parser.parse(source, { source: documentPath });
  let errors = 0;
  for (const d of diagnostics) {
    if (d.severity === 0) errors += 1;
    console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
  }
  if (document === undefined || errors > 0) {
    console.log(`invalid: ${errors} error(s)`);
    process.exit(1);
  }
  console.log(`valid: ${document.channels().length} channels, ${document.operations().length} operations`);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
