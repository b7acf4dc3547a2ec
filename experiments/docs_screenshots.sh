#!/usr/bin/env bash
# Screenshots of the documentation site's home page and one API page, by headless Chromium
# (Debian: apt-get install chromium libjs-mathjax), into docs/screenshots/.
#
# The site loads MathJax 3 from a CDN; a machine without internet gets Debian's MathJax 2
# instead, served from the built site, so that the equations are typeset as a reader sees them.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
sed -e "s|docs_dir: docs|docs_dir: $PWD/docs|" \
    -e "s|  - docs/hooks/results.py|  - $PWD/docs/hooks/results.py|" \
    -e "s|          paths: \[src\]|          paths: [$PWD/src]|" \
    -e "s|  - javascripts/mathjax.js|  - javascripts/mathjax2.js|" \
    -e "s|  - https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js|  - mathjax/MathJax.js?config=TeX-AMS_CHTML|" \
    mkdocs.yml > "$work/mkdocs.yml"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build -q -f "$work/mkdocs.yml" -d "$work/site"
cat > "$work/site/javascripts/mathjax2.js" <<'JS'
window.MathJax = {
  tex2jax: {inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true,
            processEnvironments: true, ignoreClass: ".*|", processClass: "arithmatex"},
};
JS
ln -s /usr/share/javascript/mathjax "$work/site/mathjax"
(cd "$work/site" && exec python3 -m http.server 8765 >/dev/null 2>&1) &
server=$!
trap 'kill $server' EXIT
sleep 1
mkdir -p docs/screenshots
shoot() {  # name, path, window size
    chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size="$3" \
        --virtual-time-budget=8000 --screenshot="docs/screenshots/$1.png" \
        "http://localhost:8765$2" 2>&1 | grep -F "bytes written"
}
shoot home / 1280,1400
shoot api-flow /reference/flows/ 1280,1800
