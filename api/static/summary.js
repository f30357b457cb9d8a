// The agenda/summary page: follows the booking's AI jobs as server-sent events (read with
// fetch, since EventSource cannot send the X-Join-Credential header) and shows the outputs.
"use strict";

const credential = decodeURIComponent(location.pathname.split("/").pop());
const headers = { "X-Join-Credential": credential };
const $ = (id) => document.getElementById(id);

function item(list, text) {
  const li = document.createElement("li");
  li.textContent = text;
  list.appendChild(li);
}

async function getJSON(path) {
  const response = await fetch(path, { headers, cache: "no-store" });
  return response.ok ? response.json() : null;
}

async function showOutputs(booking) {
  const agenda = await getJSON(`/v1/bookings/${booking}/agenda`);
  if (agenda) {
    $("agenda").replaceChildren();
    for (const entry of agenda.items) item($("agenda"), `${entry.title} (${entry.minutes} min)`);
    $("agenda-box").hidden = false;
  }
  const summary = await getJSON(`/v1/bookings/${booking}/summary`);
  $("summary-box").hidden = !summary;
  if (summary) {
    $("summary").textContent = summary.summary;
    $("decisions").replaceChildren();
    for (const decision of summary.decisions) item($("decisions"), decision);
    $("actions").replaceChildren();
    for (const action of summary.action_items) item($("actions"), `${action.owner}: ${action.task}`);
  }
}

function showJobs(jobs) {
  $("jobs").replaceChildren();
  for (const job of jobs.values()) {
    const why = job.error ? ` (${job.error})` : "";
    item($("jobs"), `${job.kind}: ${job.status}, ${job.progress}%${why}`);
  }
}

async function follow(booking) {
  const jobs = new Map();
  for (;;) {
    const response = await fetch(`/v1/bookings/${booking}/jobs/events`, { headers });
    if (!response.ok) throw new Error("the job stream is not available");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const fields = Object.fromEntries(
          block.split("\n").filter((l) => l.includes(": ")).map((l) => l.split(/: (.*)/s, 2)));
        if (fields.event === "job") {
          const job = JSON.parse(fields.data);
          jobs.set(job.id, job);
          showJobs(jobs);
          if (job.status === "succeeded") await showOutputs(booking);
        }
      }
    }
    $("status").textContent = jobs.size ? "Up to date." : "No AI jobs for this session yet.";
    await new Promise((resolve) => setTimeout(resolve, 5000));
  }
}

async function main() {
  const consent = await getJSON("/v1/consent");
  if (!consent) {
    $("status").textContent = "This link is not valid.";
    return;
  }
  await showOutputs(consent.booking_id);
  await follow(consent.booking_id);
}

main().catch((error) => { $("status").textContent = String(error.message || error); });
