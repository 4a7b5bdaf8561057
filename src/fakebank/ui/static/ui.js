// fakebank workbench: drag and drop onto the query form, the heat-map toggle, a busy marker.
// No framework, no build step; the pages work without it (file picker, plain forms).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("query-form");
  const drop = document.getElementById("drop");
  const input = document.getElementById("file");
  const names = document.getElementById("drop-files");
  const busy = document.getElementById("busy");

  const show = () => {
    if (names && input) names.textContent = Array.from(input.files).map((f) => f.name).join(", ");
  };
  const submit = () => {
    if (!form || !input || !input.files.length) return;
    show();
    if (busy) busy.hidden = false;
    form.requestSubmit();
  };

  if (drop && input) {
    ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      if (!e.dataTransfer || !e.dataTransfer.files.length) return;
      input.files = e.dataTransfer.files; // one or many files, sent as the form's `file` field
      submit();
    });
    input.addEventListener("change", submit);
  }
  if (form && busy) form.addEventListener("submit", () => { busy.hidden = false; });

  document.querySelectorAll(".heat-toggle").forEach((button) => {
    button.addEventListener("click", () => {
      const img = button.parentElement.querySelector("img.query-img");
      const heat = img.src !== img.dataset.heat;
      img.src = heat ? img.dataset.heat : img.dataset.plain;
      img.classList.toggle("heat", heat);
      button.textContent = heat ? "show image" : "show heat map";
    });
  });
});
