-- luacheck configuration: Lua 5.4, busted globals in specs, no print in providers.
std = "lua54"
max_line_length = 100
codes = true
ignore = { "212/_.*" } -- unused arguments named _ctx etc. are intentional
files["spec/**/*.lua"] = { std = "+busted" }
files["providers/**/*.lua"] = { not_globals = { "print" } }
files["fuzz/**/*.lua"] = { read_globals = { "FUZZ_DIR" } } -- set by fuzz/lua_driver.c
exclude_files = {
  "build/**",
  "build-*/**",
  "bench/node_modules/**",
  "spec/**/node_modules/**",
  "spec/fixtures/broken/**", -- broken on purpose: the loader must report them
}
