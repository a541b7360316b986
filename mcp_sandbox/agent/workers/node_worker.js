'use strict';
/**
 * The interpreter behind one JavaScript or TypeScript code context, started by the sandbox agent.
 *
 * The agent runs `node node_worker.js [--typescript]` with the user's cwd and environment, stdin
 * on /dev/null and stdout/stderr on pipes that carry the user's output. Two more inherited file
 * descriptors carry the control protocol, one JSON object per line:
 *
 * - fd 3, agent -> worker: {"type": "execute", "code": "..."}, one at a time;
 * - fd 4, worker -> agent: {"type": "ready", "language", "engine": "node", "version"} once at
 *   startup (with an "error" instead when TypeScript cannot be compiled, after which the worker
 *   exits), then one {"type": "result", "results": [bundle, ...], "error": null or {"name",
 *   "value", "traceback": [line, ...]}, "execution_count": n} per execute, written after the
 *   cell's console output (synchronous on Linux pipes) has reached stdout/stderr.
 *
 * Cells run in the worker's own global context, as in the `node` REPL: globals, `let`, `const`,
 * `function` and `class` persist from cell to cell, and values from require()d modules share
 * the cell's built-ins (so `instanceof Error` and `Array` behave). The worker's own state lives in
 * this module's scope, out of the cells' reach. The value of a cell's last expression is its
 * result. SIGINT interrupts a running cell and is ignored while idle; EOF on fd 3 ends the worker.
 *
 * Limits: top-level `await` relies on a source rewrite (see rewriteTopLevelAwait) that handles
 * common code, not every corner of the grammar; a synchronous endless loop is interruptible only
 * before a cell's first `await` (or in a cell without one), as later code runs outside the vm
 * call that watches for SIGINT; after an interrupt, code the cell has already started (timers,
 * pending promises) keeps running. Cells are scripts, as in the REPL: no `import` statements
 * (require() or `await import()` instead, the latter from Node.js 20.12). TypeScript is only
 * transpiled, never type-checked.
 */

const fs = require('node:fs');
const Module = require('node:module');
const net = require('node:net');
const path = require('node:path');
const readline = require('node:readline');
const util = require('node:util');
const vm = require('node:vm');

const OWN_EXPERIMENTAL_FEATURES = ['vm.USE_MAIN_CONTEXT_DEFAULT_LOADER', 'stripTypeScriptTypes'];
const CONTROL_IN_FD = 3;
const CONTROL_OUT_FD = 4;
const TYPESCRIPT = process.argv.includes('--typescript');

/** Writes one control message as one line. */
function send(message) {
  const data = Buffer.from(`${JSON.stringify(message)}\n`, 'utf8');
  let offset = 0;
  while (offset < data.length) {
    try {
      offset += fs.writeSync(CONTROL_OUT_FD, data, offset);
    } catch (err) {
      // EAGAIN only if the agent handed over a non-blocking pipe: wait for it to drain.
      // Anything else means the agent is gone, and with it the reason to run.
      if (err.code !== 'EAGAIN') process.exit(1);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// TypeScript

/** A function from TypeScript source to JavaScript, or null when this Node.js cannot provide one. */
function loadTypeScriptCompiler() {
  if (typeof Module.stripTypeScriptTypes === 'function') {
    return (code) => {
      try {
        // Erasing types keeps every line and column where the user wrote it.
        return Module.stripTypeScriptTypes(code);
      } catch (err) {
        if (err.code !== 'ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX') throw err;
        return Module.stripTypeScriptTypes(code, { mode: 'transform' }); // enums, namespaces
      }
    };
  }
  const ts = requireTypeScriptPackage();
  if (ts === null) return null;
  const compilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.CommonJS, // `import x from 'y'` becomes require()
    esModuleInterop: true,
  };
  return (code) => ts.transpileModule(code, { compilerOptions }).outputText;
}

/** The `typescript` package, found from the cwd (and NODE_PATH) or in the global node_modules. */
function requireTypeScriptPackage() {
  const globalModules = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules');
  for (const base of [process.cwd(), globalModules]) {
    try {
      return Module.createRequire(path.join(base, 'noop.js'))('typescript');
    } catch {
      // not installed there
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Top-level await
//
// A script cannot contain top-level `await`, so such a cell runs as the body of an async arrow
// function, rewritten the way the `node` REPL does it: top-level `let`/`const`/`var` and `class`
// declarations become assignments to global bindings declared in front of the wrapper, function
// declarations are copied to globalThis, and the last expression statement is returned. The
// rewrite works on tokens, not a syntax tree, so unusual code may defeat it: then the cell
// fails with the SyntaxError of the original code. Known gaps: `var` inside top-level blocks and
// loops stays local to the cell, and a `const` declared in such a cell becomes a `let`.

const PUNCTUATORS = [
  '>>>=', '...', '===', '!==', '**=', '<<=', '>>=', '>>>', '&&=', '||=', '??=',
  '=>', '==', '!=', '<=', '>=', '&&', '||', '??', '?.', '++', '--', '+=', '-=', '*=', '/=', '%=',
  '&=', '|=', '^=', '**', '<<', '>>',
];
const OPENERS = new Set(['(', '[', '{']);
const CLOSERS = new Set([')', ']', '}']);
// After these words a `/` starts a regular expression rather than a division.
const KEYWORDS_BEFORE_EXPRESSION = new Set([
  'return', 'typeof', 'instanceof', 'in', 'of', 'new', 'delete', 'void', 'throw', 'case', 'do',
  'else', 'yield', 'await',
]);
// Words after which a line break never ends a statement.
const WORDS_THAT_CONTINUE = new Set([
  'in', 'instanceof', 'of', 'typeof', 'new', 'delete', 'void', 'await', 'yield', 'extends',
  'else', 'do', 'case', 'var', 'let', 'const', 'function', 'class', 'async',
]);
// Statements whose body is a block that ends them.
const BLOCK_STATEMENTS = new Set(['if', 'for', 'while', 'do', 'try', 'switch', 'with', 'function', 'class']);
const NOT_EXPRESSIONS = new Set([
  'var', 'let', 'const', 'function', 'class', 'if', 'for', 'while', 'do', 'try', 'switch', 'with',
  'return', 'throw', 'break', 'continue', 'import', 'export', 'debugger',
]);
const LINE_BREAK = /[\n\r\u2028\u2029]/;
const IDENTIFIER_START = /[A-Za-z_$\u0080-\uffff\\]/;
const IDENTIFIER_PART = /[A-Za-z0-9_$\u0080-\uffff\\]/;

/** Index just past the string literal that starts at i. */
function skipString(code, i) {
  const quote = code[i];
  for (i += 1; i < code.length; i += 1) {
    if (code[i] === '\\') i += 1;
    else if (code[i] === quote || LINE_BREAK.test(code[i])) return i + 1;
  }
  return i;
}

/** Index just past the template literal that starts at i, `${...}` parts included. */
function skipTemplate(code, i) {
  for (i += 1; i < code.length; i += 1) {
    if (code[i] === '\\') i += 1;
    else if (code[i] === '`') return i + 1;
    else if (code[i] === '$' && code[i + 1] === '{') i = skipBraces(code, i + 2) - 1;
  }
  return i;
}

/** Index just past the `}` that closes a brace opened just before i. */
function skipBraces(code, i) {
  let depth = 1;
  while (i < code.length) {
    const c = code[i];
    if (c === '"' || c === "'") i = skipString(code, i);
    else if (c === '`') i = skipTemplate(code, i);
    else if (c === '/' && code[i + 1] === '/') i = skipLineComment(code, i);
    else if (c === '/' && code[i + 1] === '*') i = skipBlockComment(code, i);
    else {
      if (c === '{') depth += 1;
      else if (c === '}' && (depth -= 1) === 0) return i + 1;
      i += 1;
    }
  }
  return i;
}

function skipLineComment(code, i) {
  while (i < code.length && !LINE_BREAK.test(code[i])) i += 1;
  return i;
}

function skipBlockComment(code, i) {
  const end = code.indexOf('*/', i + 2);
  return end < 0 ? code.length : end + 2;
}

/** Index just past the regular expression literal that starts at i. */
function skipRegExp(code, i) {
  let inClass = false;
  for (i += 1; i < code.length && !LINE_BREAK.test(code[i]); i += 1) {
    if (code[i] === '\\') i += 1;
    else if (code[i] === '[') inClass = true;
    else if (code[i] === ']') inClass = false;
    else if (code[i] === '/' && !inClass) {
      i += 1;
      break;
    }
  }
  while (i < code.length && IDENTIFIER_PART.test(code[i])) i += 1; // flags
  return i;
}

function regExpAllowedAfter(token) {
  if (token === undefined) return true;
  if (token.type === 'name') return KEYWORDS_BEFORE_EXPRESSION.has(token.value);
  return token.type === 'punct' && !CLOSERS.has(token.value);
}

/**
 * Splits code into tokens {type: name|number|string|template|regexp|punct, value, start, end,
 * lineBreakBefore}, skipping comments. Good enough to find statements and declarations.
 */
function tokenize(code) {
  const tokens = [];
  let lineBreak = false;
  let i = 0;
  while (i < code.length) {
    const c = code[i];
    const start = i;
    if (LINE_BREAK.test(c)) {
      lineBreak = true;
      i += 1;
      continue;
    }
    if (/\s/.test(c)) {
      i += 1;
      continue;
    }
    if (c === '/' && (code[i + 1] === '/' || code[i + 1] === '*')) {
      i = code[i + 1] === '/' ? skipLineComment(code, i) : skipBlockComment(code, i);
      lineBreak = lineBreak || LINE_BREAK.test(code.slice(start, i));
      continue;
    }
    let type;
    if (c === '"' || c === "'") {
      type = 'string';
      i = skipString(code, i);
    } else if (c === '`') {
      type = 'template';
      i = skipTemplate(code, i);
    } else if (IDENTIFIER_START.test(c)) {
      type = 'name';
      while (i < code.length && IDENTIFIER_PART.test(code[i])) i += 1;
    } else if (/[0-9]/.test(c) || (c === '.' && /[0-9]/.test(code[i + 1] || ''))) {
      type = 'number';
      while (i < code.length && /[0-9A-Za-z_.]/.test(code[i])) i += 1;
    } else if (c === '/' && regExpAllowedAfter(tokens[tokens.length - 1])) {
      type = 'regexp';
      i = skipRegExp(code, i);
    } else {
      type = 'punct';
      const punctuator = PUNCTUATORS.find((p) => code.startsWith(p, i));
      i += punctuator ? punctuator.length : 1;
    }
    tokens.push({ type, value: code.slice(start, i), start, end: i, lineBreakBefore: lineBreak });
    lineBreak = false;
  }
  return tokens;
}

function isPunct(token, value) {
  return token !== undefined && token.type === 'punct' && token.value === value;
}

function isName(token, value) {
  return token !== undefined && token.type === 'name' && token.value === value;
}

/** Whether token, first on a new line, carries on the expression of the line before. */
function continuesExpression(token) {
  if (token.type === 'template') return true; // a tagged template
  if (token.type === 'name') return ['in', 'instanceof', 'of', 'else', 'catch', 'finally'].includes(token.value);
  return token.type === 'punct' && !['{', '!', '~', '++', '--', ';', ...CLOSERS].includes(token.value);
}

function canEndStatement(token) {
  if (token.type === 'name') return !WORDS_THAT_CONTINUE.has(token.value);
  if (token.type === 'punct') return CLOSERS.has(token.value) || token.value === '++' || token.value === '--';
  return true;
}

/** Splits top-level tokens into statements, as [first, last] token index pairs. */
function splitStatements(tokens) {
  const statements = [];
  const openers = []; // indices of the brackets open at the current token
  let first = 0;
  let headerEnd = -1; // the `)` of the latest `if (...)`, `for (...)`..., after which a body follows
  for (let i = 0; i < tokens.length; i += 1) {
    const token = tokens[i];
    if (i > first && openers.length === 0) {
      const previous = tokens[i - 1];
      const opening = isName(tokens[first], 'async') && i > first + 1 ? tokens[first + 1] : tokens[first];
      const blockStatement = isPunct(opening, '{') || (opening.type === 'name' && BLOCK_STATEMENTS.has(opening.value));
      const continuation =
        ['else', 'catch', 'finally'].includes(token.value) || (isName(token, 'while') && isName(opening, 'do'));
      const ended =
        isPunct(previous, ';') ||
        (isPunct(previous, '}') && blockStatement) ||
        (token.lineBreakBefore && i - 1 !== headerEnd && canEndStatement(previous) && !continuesExpression(token));
      if (ended && !continuation) {
        statements.push([first, i - 1]);
        first = i;
      }
    }
    if (token.type !== 'punct') continue;
    if (OPENERS.has(token.value)) openers.push(i);
    else if (CLOSERS.has(token.value) && openers.length > 0) {
      const opener = openers.pop();
      const before = tokens[opener - 1];
      const header = ['if', 'for', 'while', 'with'].some((keyword) => isName(before, keyword)) ||
        (isName(before, 'await') && isName(tokens[opener - 2], 'for'));
      if (openers.length === 0 && token.value === ')' && header) headerEnd = i;
    }
  }
  if (first < tokens.length) statements.push([first, tokens.length - 1]);
  return statements;
}

/** Index of the token closing the bracket opened at tokens[i], or the last index. */
function matchingBracket(tokens, i) {
  let depth = 0;
  for (let j = i; j < tokens.length; j += 1) {
    if (tokens[j].type !== 'punct') continue;
    if (OPENERS.has(tokens[j].value)) depth += 1;
    else if (CLOSERS.has(tokens[j].value) && (depth -= 1) === 0) return j;
  }
  return tokens.length - 1;
}

/** Index of the first token in [i, end] at bracket depth 0 that is one of values, else end + 1. */
function findAtDepthZero(tokens, i, end, values) {
  for (let j = i; j <= end; j += 1) {
    const token = tokens[j];
    if (token.type !== 'punct') continue;
    if (values.includes(token.value)) return j;
    if (OPENERS.has(token.value)) j = matchingBracket(tokens, j);
  }
  return end + 1;
}

/** Names bound by the binding pattern in tokens[start..end]. */
function boundNames(tokens, start, end) {
  const names = [];
  const visit = (i, last) => {
    const token = tokens[i];
    if (token === undefined || i > last) return;
    if (token.type === 'name') {
      names.push(token.value);
      return;
    }
    if (!isPunct(token, '[') && !isPunct(token, '{')) return;
    const close = matchingBracket(tokens, i);
    for (let element = i + 1; element < close; ) {
      const next = findAtDepthZero(tokens, element, close - 1, [',']);
      const defaultAt = findAtDepthZero(tokens, element, next - 1, ['=']);
      let target = element;
      if (isPunct(tokens[target], '...')) target += 1;
      else if (token.value === '{') {
        const colon = findAtDepthZero(tokens, element, defaultAt - 1, [':']);
        if (colon < defaultAt) target = colon + 1; // `key: pattern`; otherwise a shorthand name
      }
      visit(target, defaultAt - 1);
      element = next + 1;
    }
  };
  visit(start, end);
  return names;
}

/** 'var' or 'let' (for `let` and `const`) if the statement at tokens[first] declares variables. */
function declarationKind(tokens, first) {
  const [head, next] = [tokens[first], tokens[first + 1]];
  if (isName(head, 'var')) return 'var';
  if (isName(head, 'const')) return 'let';
  const letBinding = next !== undefined && (next.type === 'name' || isPunct(next, '[') || isPunct(next, '{'));
  return isName(head, 'let') && letBinding ? 'let' : null;
}

function isFunctionDeclaration(tokens, first) {
  return isName(tokens[first], 'function') || (isName(tokens[first], 'async') && isName(tokens[first + 1], 'function'));
}

function isExpressionStatement(tokens, first) {
  const head = tokens[first];
  if (head.type === 'punct') return !isPunct(head, '{') && !isPunct(head, ';');
  if (head.type !== 'name') return true;
  const labelled = isPunct(tokens[first + 1], ':');
  return !labelled && !NOT_EXPRESSIONS.has(head.value) && !isFunctionDeclaration(tokens, first);
}

/**
 * Rewrites a cell that uses top-level `await` into a script that runs it in an async function
 * and evaluates to a promise of {value} (the last expression's value) or of undefined.
 */
function rewriteTopLevelAwait(code) {
  const tokens = tokenize(code);
  const statements = splitStatements(tokens);
  const edits = []; // [start, end, replacement] of the code; start === end inserts
  const hoisted = { let: [], var: [] };
  const functionNames = [];
  for (const [index, [first, last]] of statements.entries()) {
    const head = tokens[first];
    const end = isPunct(tokens[last], ';') ? last - 1 : last; // the statement without its `;`
    if (end < first) continue;
    const kind = declarationKind(tokens, first);
    if (kind !== null) {
      for (let declarator = first + 1; declarator <= end; ) {
        const next = findAtDepthZero(tokens, declarator, end, [',']);
        const initializer = findAtDepthZero(tokens, declarator, next - 1, ['=']);
        hoisted[kind].push(...boundNames(tokens, declarator, initializer - 1));
        declarator = next + 1;
      }
      edits.push([head.start, head.end, 'void (']);
      edits.push([tokens[end].end, tokens[end].end, ')']);
    } else if (isName(head, 'class') && tokens[first + 1] !== undefined && tokens[first + 1].type === 'name') {
      hoisted.let.push(tokens[first + 1].value);
      edits.push([head.start, head.start, `${tokens[first + 1].value} = `]);
      edits.push([tokens[end].end, tokens[end].end, ';']);
    } else if (isFunctionDeclaration(tokens, first)) {
      const name = tokens.slice(first + 1, end + 1).find((token) => token.type === 'name' && token.value !== 'function');
      if (name !== undefined) functionNames.push(name.value);
    } else if (index === statements.length - 1 && isExpressionStatement(tokens, first)) {
      edits.push([head.start, head.start, 'return { value: (']);
      edits.push([tokens[end].end, tokens[end].end, ') }']);
    }
  }
  let body = code;
  for (const [start, end, replacement] of edits.sort((a, b) => b[0] - a[0])) {
    body = body.slice(0, start) + replacement + body.slice(end);
  }
  // Function declarations are hoisted inside the wrapper, so they can be published before the
  // body runs.
  const publish = functionNames.map((name) => `globalThis[${JSON.stringify(name)}] = ${name}; `).join('');
  const declare = (keyword, names) => (names.length ? `${keyword} ${[...new Set(names)].join(', ')}; ` : '');
  // Everything the rewrite adds before the cell stays on its first line, so line numbers in
  // stack traces still match the user's code.
  return `${declare('let', hoisted.let)}${declare('var', hoisted.var)}(async () => {${publish}${body}\n})()`;
}

// ---------------------------------------------------------------------------------------------
// Running cells

class Interrupted extends Error {
  constructor(message) {
    super(message);
    this.name = 'Interrupted';
  }
}

const compileTypeScript = TYPESCRIPT ? loadTypeScriptCompiler() : null;
// Cells require() from the cwd, like the `node` REPL; `module`/`exports` also serve TypeScript's
// CommonJS output for `import` statements.
const userRequire = Module.createRequire(path.join(process.cwd(), '[cell]'));
const userModule = { exports: {}, require: userRequire };
// Dynamic import() from cells; resolving from the cwd needs Node.js >= 20.12.
const importModuleDynamically = vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;
let executionCount = 0;
let interruptAwait = null; // set while an async cell is being awaited

function compile(code, filename) {
  return new vm.Script(code, { filename, importModuleDynamically });
}

function runScript(script) {
  // breakOnSigint turns SIGINT into an exception in synchronous code, like Ctrl-C in the REPL.
  return script.runInThisContext({ breakOnSigint: true });
}

/** Settles like promise, or rejects with Interrupted when SIGINT arrives first. */
function awaitInterruptibly(promise) {
  return new Promise((resolve, reject) => {
    interruptAwait = () => reject(new Interrupted('Execution was interrupted by SIGINT while awaiting'));
    promise.then(resolve, reject);
  }).finally(() => {
    interruptAwait = null;
  });
}

/**
 * Runs a cell and settles to {value} with its last expression's value (wrapped so that a
 * promise is a result as it is, not awaited).
 */
async function evaluate(code, filename) {
  let script;
  try {
    script = compile(code, filename);
  } catch (err) {
    if (!(err instanceof SyntaxError) || !/\bawait\b/.test(code)) throw err;
    let rewritten;
    try {
      rewritten = compile(rewriteTopLevelAwait(code), filename);
    } catch {
      throw err; // the original message points at the user's code
    }
    const outcome = await awaitInterruptibly(runScript(rewritten));
    return { value: outcome === undefined ? undefined : outcome.value };
  }
  return { value: runScript(script) };
}

function isPlainData(value) {
  if (Array.isArray(value)) return true;
  if (value === null || typeof value !== 'object') return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

function bundle(value) {
  const data = { 'text/plain': util.inspect(value) };
  if (isPlainData(value)) {
    try {
      const json = JSON.stringify(value);
      if (json !== undefined) data['application/json'] = JSON.parse(json);
    } catch {
      // cyclic or holds a BigInt: text only
    }
  }
  return data;
}

/** The stack without the frames of vm and of this worker, which lie below the cell's. */
function stackLines(err, fallback) {
  const lines = String(err.stack || fallback).split('\n');
  const internal = lines.findIndex(
    (line) => /^\s+at /.test(line) && (line.includes('node:vm:') || line.includes(__filename)),
  );
  const kept = internal < 0 ? lines : lines.slice(0, internal);
  while (kept.length > 1 && kept[kept.length - 1].trim() === '') kept.pop();
  return kept;
}

function errorInfo(err) {
  if (err && err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') {
    return { name: 'Interrupted', value: err.message, traceback: [`Interrupted: ${err.message}`] };
  }
  if (util.types.isNativeError(err) || err instanceof Error) {
    const name = String(err.name);
    const value = String(err.message);
    return { name, value, traceback: stackLines(err, `${name}: ${value}`) };
  }
  const shown = util.inspect(err);
  return { name: 'Uncaught', value: shown, traceback: [`Uncaught ${shown}`] };
}

async function execute(code) {
  executionCount += 1;
  const results = [];
  let error = null;
  try {
    const source = compileTypeScript ? compileTypeScript(code) : code;
    const { value } = await evaluate(source, `<cell ${executionCount}>`);
    if (value !== undefined) results.push(bundle(value));
  } catch (err) {
    error = errorInfo(err);
  }
  // One turn of the event loop lets output the cell has just queued (a warning, a callback on
  // a settled promise, an unhandled rejection) land before its result rather than in the next.
  await new Promise((resolve) => setImmediate(resolve));
  send({ type: 'result', results, error, execution_count: executionCount });
}

function main() {
  const language = TYPESCRIPT ? 'typescript' : 'javascript';
  const ready = { type: 'ready', language, engine: 'node', version: process.versions.node };
  if (TYPESCRIPT && compileTypeScript === null) {
    ready.error =
      "TypeScript needs Node.js >= 22.13 or the 'typescript' package; this is Node.js " +
      `${process.version} and 'typescript' was not found from ${process.cwd()} or in the global ` +
      'node_modules. Install it with `npm install -g typescript` (or in the working directory), ' +
      'or use JavaScript.';
    send(ready);
    process.exit(1);
  }
  Object.assign(globalThis, { require: userRequire, module: userModule, exports: userModule.exports });

  // Whatever cells leave behind (a throwing timer, a rejected promise nobody awaits) is reported
  // on stderr instead of ending the worker and the context's state with it.
  const report = (what, err) => process.stderr.write(`${what}: ${errorInfo(err).traceback.join('\n')}\n`);
  process.on('uncaughtException', (err) => report('Uncaught exception', err));
  process.on('unhandledRejection', (reason) => report('Unhandled promise rejection', reason));
  // Node.js would announce the experimental features the worker itself relies on in the middle
  // of some cell's stderr.
  const emitWarning = process.emitWarning;
  process.emitWarning = function filteredEmitWarning(warning, ...rest) {
    const text = String(warning && warning.message !== undefined ? warning.message : warning);
    if (!OWN_EXPERIMENTAL_FEATURES.some((feature) => text.startsWith(`${feature} is an experimental feature`))) {
      emitWarning.call(this, warning, ...rest);
    }
  };
  // While a cell runs synchronously breakOnSigint takes SIGINT; while one awaits, this handler
  // abandons the wait; while idle, it keeps SIGINT from killing the worker.
  process.on('SIGINT', () => {
    if (interruptAwait !== null) interruptAwait();
  });

  send(ready);
  const input = new net.Socket({ fd: CONTROL_IN_FD, readable: true, writable: false });
  let queue = Promise.resolve();
  readline.createInterface({ input, crlfDelay: Infinity })
    .on('line', (line) => {
      let message;
      try {
        message = JSON.parse(line);
      } catch {
        return;
      }
      if (message === null || typeof message !== 'object' || message.type !== 'execute') return;
      queue = queue.then(() => execute(String(message.code ?? '')));
    })
    .on('close', () => process.exit(0));
}

main();
