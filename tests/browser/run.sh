#!/usr/bin/env bash
# The example app's browser test: builds examples/app, then drives it in
# headless Chromium (Debian's `chromium`) with playwright-core.
#
#   tests/browser/run.sh                          # screenshots to tests/browser/out/
#   UPDATE_SCREENSHOTS=1 tests/browser/run.sh     # ... to docs/screenshots/ (commit them)
#
# Fails (never skips) when Chromium cannot be installed or any check fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
chromium="${CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$chromium" ]; then
    echo "run.sh: $chromium is missing: installing chromium and chromium-driver with apt-get"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if ! { $sudo apt-get update && $sudo apt-get install -y chromium chromium-driver; }; then
        echo "run.sh: error: could not install chromium" >&2
        exit 1
    fi
fi
if [ ! -x "$chromium" ]; then
    echo "run.sh: error: $chromium is still missing after the install" >&2
    exit 1
fi
for tool in node npm cargo; do
    command -v "$tool" >/dev/null || { echo "run.sh: error: $tool is not installed" >&2; exit 1; }
done

(cd "$here" && npm ci --no-audit --no-fund)

# Cargo says where it put the binary (whatever the target directory).
app_bin="$(cd "$repo" && cargo build --example app --message-format=json-render-diagnostics |
    node -e '
        let out = "";
        process.stdin.on("data", (d) => (out += d)).on("end", () => {
            const exe = out.split("\n").map((l) => { try { return JSON.parse(l); } catch { return {}; } })
                .filter((m) => m.reason === "compiler-artifact" && m.target?.name === "app" && m.executable)
                .map((m) => m.executable).pop();
            if (!exe) process.exit(1);
            console.log(exe);
        });')"

if [ "${UPDATE_SCREENSHOTS:-}" = 1 ]; then
    shots="$repo/docs/screenshots"
else
    shots="$here/out"
fi
mkdir -p "$shots"

cd "$here"
APP_BIN="$app_bin" CHROMIUM="$chromium" SCREENSHOTS_DIR="$shots" node test.mjs
