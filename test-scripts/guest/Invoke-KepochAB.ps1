<#
.SYNOPSIS
    Runs a kepoch A/B series inside a Windows guest (optionally installing the driver first).

.DESCRIPTION
    Convenience wrapper around the KepochGuest module next to this script. Run it in an elevated
    Windows PowerShell 5.1 or PowerShell 7 session inside the guest. It prints the topology (maximum and
    active processors per group, whether the OS supports processor hot-add), optionally installs the
    driver package, then runs Invoke-KepochAB: Rounds rounds alternating Strategies, restarting the
    driver between rounds, one JSON file per round in OutputPath. Copy the folder back to the host and run
    `kepoch-sim report results/*.json`.

.PARAMETER OutputPath
    Folder for the per-round JSON files.

.PARAMETER Rounds
    Number of rounds (default 6).

.PARAMETER Strategies
    Strategies to alternate (default lazy, callback, eager).

.PARAMETER PackagePath
    When given, install the driver package from this folder first (kepoch.sys, kepoch.inf, kepochctl.exe).

.PARAMETER LoadRate
    Load generator rate in operations per second.

.PARAMETER LoadSeconds
    Load duration per round.

.PARAMETER IdleDeactivation
    Registry IdleDeactivation (1 default, 0 keeps every prepared CPU in every cycle).

.EXAMPLE
    .\Invoke-KepochAB.ps1 -PackagePath C:\kepoch\package -OutputPath C:\kepoch\results -Rounds 6

.EXAMPLE
    .\Invoke-KepochAB.ps1 -OutputPath C:\kepoch\results -WhatIf
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [Parameter(Mandatory = $true)] [string] $OutputPath,
    [ValidateRange(1, 1000)] [int] $Rounds = 6,
    [string[]] $Strategies = @('lazy', 'callback', 'eager'),
    [string] $PackagePath,
    [int] $LoadRate = 100000,
    [ValidateRange(1, 86400)] [int] $LoadSeconds = 30,
    [ValidateRange(0, 1)] [int] $IdleDeactivation = 1
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

Import-Module (Join-Path $PSScriptRoot 'KepochGuest.psm1') -Force

$topology = Get-KepochTopology
Write-Host ("kepoch: {0} max / {1} active processors in {2} group(s); hot-add supported by this OS: {3}" -f `
        $topology.max_processors, $topology.active_processors, $topology.max_groups, $topology.hot_add_supported)
foreach ($g in $topology.groups) { Write-Host ("  group {0}: max {1}, active {2}" -f $g.group, $g.max, $g.active) }
if ($topology.max_processors -gt $topology.active_processors -and $Strategies -contains 'eager') {
    Write-Host 'kepoch: max > active here, so eager is expected to refuse to load (error 87), like the original design.'
}

if ($PackagePath) {
    Install-KepochDriver -PackagePath $PackagePath -Confirm:$false -WhatIf:$WhatIfPreference | Out-Null
}

$files = Invoke-KepochAB -Rounds $Rounds -OutputPath $OutputPath -Strategies $Strategies -LoadRate $LoadRate `
    -LoadSeconds $LoadSeconds -IdleDeactivation $IdleDeactivation -WhatIf:$WhatIfPreference
foreach ($f in @($files)) { if ($f) { Write-Host "kepoch: wrote $($f.FullName)" } }
Write-Host 'kepoch: compare on the host with: kepoch-sim report results/*.json'
