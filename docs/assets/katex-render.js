// Formulas are written as \( ... \) and \[ ... \] (pymdownx.arithmatex, generic mode) and
// rendered in the browser by the KaTeX copy in assets/katex/: nothing is fetched from the
// internet, so the docs read the same offline. Material's document$ re-runs this after each
// instant-navigation page load.
function renderFormulas(root) {
  for (const element of root.querySelectorAll(".arithmatex")) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  }
}

if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => renderFormulas(body));
} else {
  document.addEventListener("DOMContentLoaded", () => renderFormulas(document.body));
}
