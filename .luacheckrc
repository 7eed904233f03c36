-- luacheck configuration: Lua 5.4, busted globals in specs, no print in providers.
std = "lua54"
max_line_length = 100
codes = true
ignore = { "212/_.*" } -- unused arguments named _ctx etc. are intentional
files["spec/**/*.lua"] = { std = "+busted" }
files["providers/**/*.lua"] = { not_globals = { "print" } }
exclude_files = {
  "build/**",
  "bench/node_modules/**",
  "spec/**/node_modules/**",
  "spec/fixtures/broken/**", -- broken on purpose: the loader must report them
}
